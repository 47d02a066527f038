"""The element base class: push-only ports, as in Click.

An element receives a packet on an input port (`push(pkt, port)`) and hands
packets to its outputs (`self.out[i](pkt)`). Unconnected outputs drop and
count. Elements may implement `tick(now)` for timers and `stats()` for the
NF report.
"""

from __future__ import annotations

import time
from typing import Any

from nslab.nf.packet import Packet


class Element:
    """Base class. Subclasses set NIN/NOUT (or call `_ports(n)`) and implement push."""

    NIN = 1
    NOUT = 1

    def __init__(self) -> None:
        self.name = type(self).__name__
        self.router: Any = None
        self.dropped = 0
        self._ports(self.NOUT)

    def _ports(self, nout: int) -> None:
        self.nout = nout
        self.out = [self._unconnected for _ in range(nout)]
        self.connected = [False] * nout

    def _unconnected(self, pkt: Packet) -> None:
        self.dropped += 1

    def connect(self, port: int, target: Element, tport: int = 0) -> None:
        if not 0 <= port < self.nout:
            raise ValueError(f"{self.name} has outputs 0..{self.nout - 1}, not {port}")
        if not 0 <= tport < target.NIN:
            raise ValueError(f"{target.name} has inputs 0..{target.NIN - 1}, not {tport}")
        if tport == 0:
            self.out[port] = target.push
        else:
            self.out[port] = lambda pkt, _push=target.push, _p=tport: _push(pkt, _p)
        self.connected[port] = True

    def push(self, pkt: Packet, port: int = 0) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Called about every 100 ms by the router (timers, flow expiry)."""

    def stats(self) -> dict[str, Any]:
        """What this element contributes to the NF report (see report.py)."""
        return {"drops": {self.name: self.dropped}} if self.dropped else {}

    def __rshift__(self, other: Element | _Port) -> Element:
        """`a >> b` connects a's output 0 to b's input 0 and returns b (Python
        composition); `a >> b[1]` targets b's input 1."""
        if isinstance(other, _Port):
            self.connect(0, other.elem, other.port)
            return other.elem
        self.connect(0, other)
        return other

    def __getitem__(self, port: int) -> _Port:
        return _Port(self, port)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Port:
    """`elem[1] >> other`: connect output 1."""

    def __init__(self, elem: Element, port: int):
        self.elem, self.port = elem, port

    def __rshift__(self, other: Element | _Port) -> Element:
        if isinstance(other, _Port):
            self.elem.connect(self.port, other.elem, other.port)
            return other.elem
        self.elem.connect(self.port, other)
        return other


# Monotonic time of the current burst, set by the router before it pushes a
# batch (cheaper than a clock read per packet); elements outside a router
# (tests) see the time of the last tick() or of import.
CLOCK = [time.monotonic()]


def now() -> float:
    return time.monotonic()
