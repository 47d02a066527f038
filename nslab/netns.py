"""Enter a network namespace from this thread with setns(2).

Namespaces are per thread: sockets a thread creates after setns() belong to
the namespace it entered, whatever thread uses them later. So one Python
process can open sockets in several namespaces without `ip netns exec`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Iterator

CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
# Legacy ethtool "set" commands (still honoured, mapped onto features by the kernel)
ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO = 0x17, 0x1F, 0x24
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move this thread into the namespace open at `fd`; OSError if the kernel refuses."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread in the network namespace at `path`
    (/run/netns/NAME, /proc/PID/ns/net), and come back afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def offloads_off(ends: Iterable[tuple[str, str]]) -> None:
    """`ethtool -K IF tx off tso off gso off` for each (namespace path, interface),
    as ioctls from this thread instead of one ethtool process per interface.
    Veths need it wherever frames are forwarded by something that does not
    finish checksums: OVS's userspace datapath, raw-socket NFs. (The legacy TSO
    ioctl leaves newer TSO flavours such as tx-tcp-accecn-segmentation on; plain
    TCP does not use them.)"""
    for path, name in ends:
        # a socket belongs to the namespace it was created in
        with entered(path), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for cmd in (ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO):
                value = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
                ifreq = struct.pack("16sP", name.encode(), ctypes.addressof(value))
                fcntl.ioctl(sock, SIOCETHTOOL, ifreq)


SIOCGIFHWADDR = 0x8927


def iface_macs(pid: int, names: list[str]) -> dict[str, str]:
    """{interface: MAC} of `names` in the network namespace of `pid` (ioctls
    from this thread inside the namespace; missing interfaces are left out)."""
    out: dict[str, str] = {}
    with entered(f"/proc/{pid}/ns/net"), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            try:
                res = fcntl.ioctl(sock, SIOCGIFHWADDR, struct.pack("256s", name.encode()))
            except OSError:
                continue
            out[name] = ":".join(f"{b:02x}" for b in res[18:24])
    return out
