"""Two namespaces joined by a veth pair, for tests and benchmarks of the RDMA
transport, and a way to open sockets inside a namespace from any thread
(nslab.netns), so that one Python process can drive both ends of a link.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from nslab.errors import CapabilityError
from nslab.netns import entered


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace `name` (from `ip netns`)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(entered(f"/run/netns/{name}"))
        except FileNotFoundError as exc:
            raise CapabilityError(f"network namespace {name!r} does not exist") from exc
        except OSError as exc:
            raise CapabilityError(f"setns failed: {exc.strerror} (needs root)") from exc
        yield


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Pair:
    """Namespaces a and b, linked by veth a_if <-> b_if, addresses a_ip / b_ip."""

    a: str
    b: str
    a_if: str
    b_if: str
    a_ip: str
    b_ip: str

    def exec_cmd(self, side: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.a if side == "a" else self.b, *cmd]

    def remove(self) -> None:
        for ns in (self.a, self.b):
            _ip("netns", "del", ns, check=False)


def make_pair(prefix: str, mtu: int = 1500, subnet: str = "10.79.0", gro: bool = False) -> Pair:
    """Create namespaces <prefix>a and <prefix>b joined by a veth pair. Checksum
    and segmentation offloads are turned off (like the rest of nslab does).
    `gro`: receive offload on at both ends (a veth does GRO once it is on,
    Linux >= 5.13), so that UDP GRO hands a RoCE receiver its segments in
    batches, as a NIC's GRO would. Raises CapabilityError without root;
    removes what it made on failure."""
    if os.geteuid() != 0:
        raise CapabilityError("creating network namespaces needs root")
    p = Pair(f"{prefix}a", f"{prefix}b", f"{prefix}x", f"{prefix}y", f"{subnet}.1", f"{subnet}.2")
    try:
        for ns in (p.a, p.b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", p.a_if, "mtu", str(mtu), "netns", p.a, "type", "veth", "peer", "name", p.b_if, "mtu", str(mtu), "netns", p.b)  # fmt: skip
        for ns, ifn, ip in ((p.a, p.a_if, p.a_ip), (p.b, p.b_if, p.b_ip)):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", ifn)
            _ip("-n", ns, "link", "set", ifn, "up")
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "ethtool",
                    "-K",
                    ifn,
                    "tx",
                    "off",
                    "tso",
                    "off",
                    "gso",
                    "off",
                    *(["gro", "on"] if gro else []),
                ],
                capture_output=True,
            )
    except subprocess.CalledProcessError as exc:
        p.remove()
        raise CapabilityError(
            f"could not build namespaces {p.a}/{p.b}: {exc.stderr.strip()}"
        ) from exc
    return p


@dataclass
class Chain(Pair):
    """a <-> m <-> b: a and b share a subnet; m holds interfaces m_a, m_b and
    no address (a forwarder, e.g. nslab.rdma.lossy, bridges them)."""

    m: str = ""
    m_a: str = ""
    m_b: str = ""

    def remove(self) -> None:
        for ns in (self.a, self.b, self.m):
            _ip("netns", "del", ns, check=False)


def make_chain(prefix: str, mtu: int = 1500, subnet: str = "10.79.9") -> Chain:
    """Namespaces <prefix>a, <prefix>m, <prefix>b with veths a-m and m-b,
    offloads off on all four ends (a forwarder sees real frames, not GSO
    super-packets), m's ends promiscuous. Removes what it made on failure."""
    if os.geteuid() != 0:
        raise CapabilityError("creating network namespaces needs root")
    c = Chain(f"{prefix}a", f"{prefix}b", f"{prefix}x", f"{prefix}y", f"{subnet}.1", f"{subnet}.2", f"{prefix}m", f"{prefix}p", f"{prefix}q")  # fmt: skip
    try:
        for ns in (c.a, c.b, c.m):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", c.a_if, "mtu", str(mtu), "netns", c.a, "type", "veth", "peer", "name", c.m_a, "mtu", str(mtu), "netns", c.m)  # fmt: skip
        _ip("link", "add", c.b_if, "mtu", str(mtu), "netns", c.b, "type", "veth", "peer", "name", c.m_b, "mtu", str(mtu), "netns", c.m)  # fmt: skip
        for ns, ifn, ip in ((c.a, c.a_if, c.a_ip), (c.b, c.b_if, c.b_ip), (c.m, c.m_a, None), (c.m, c.m_b, None)):  # fmt: skip
            if ip:
                _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", ifn)
            else:
                _ip("-n", ns, "link", "set", ifn, "promisc", "on")
            _ip("-n", ns, "link", "set", ifn, "up")
            off = ["tx", "off", "tso", "off", "gso", "off", "gro", "off"]
            subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", ifn, *off], capture_output=True)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        c.remove()
        raise CapabilityError(f"could not build namespaces {c.a}/{c.m}/{c.b}: {exc.stderr.strip()}") from exc  # fmt: skip
    return c
