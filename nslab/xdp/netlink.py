"""Attach an XDP program to an interface by fd (rtnetlink RTM_SETLINK with
IFLA_XDP), in the caller's network namespace. `ip link set ... xdp` needs a
pinned path or an object file; an NF that loads its own small program has
only an fd, and CAP_NET_ADMIN is all this takes (no bpftool, no bpffs)."""

from __future__ import annotations

import os
import socket
import struct

from nslab.errors import NslabError

RTM_SETLINK = 19
NLM_F_REQUEST, NLM_F_ACK = 1, 4
IFLA_XDP = 43
IFLA_XDP_FD, IFLA_XDP_FLAGS = 1, 3
NLA_F_NESTED = 0x8000
NLMSG_ERROR = 2
MODES = {"generic": 2, "native": 4, "offload": 8}  # XDP_FLAGS_{SKB,DRV,HW}_MODE


def _attr(kind: int, payload: bytes) -> bytes:
    a = struct.pack("=HH", 4 + len(payload), kind) + payload
    return a + b"\0" * (-len(a) % 4)


def set_xdp(ifname: str, prog_fd: int, mode: str = "generic") -> None:
    """Attach `prog_fd` to `ifname` in `mode` (generic|native|offload);
    prog_fd -1 detaches the program of that mode."""
    if mode not in MODES:
        raise NslabError(f"XDP mode must be one of {', '.join(MODES)}, not {mode!r}")
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise NslabError(f"no interface {ifname!r} in this network namespace") from None
    xdp = _attr(IFLA_XDP_FD, struct.pack("=i", prog_fd))
    xdp += _attr(IFLA_XDP_FLAGS, struct.pack("=I", MODES[mode]))
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    body += _attr(IFLA_XDP | NLA_F_NESTED, xdp)
    msg = struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(5)
        s.send(msg + body)
        reply = s.recv(65536)
    _len, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err:
            what = "attach" if prog_fd >= 0 else "detach"
            hint = ""
            if mode == "native" and err == 95:
                hint = " (this driver has no native XDP; use mode generic)"
            raise NslabError(f"cannot {what} XDP ({mode}) on {ifname}: {os.strerror(err)}{hint}")
