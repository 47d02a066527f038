"""The router: holds a configuration's elements, runs the event loop, and
writes the NF report on exit (normal end, SIGTERM or SIGINT)."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

from nslab.errors import NslabError
from nslab.nf import report as reportlib
from nslab.nf.element import CLOCK, Element
from nslab.nf.elements import FromDevice, ToDevice
from nslab.nf.rawsock import RawSocket

TICK_S = 0.1
# Frame I/O backends: same element API, chosen by `Router(io=...)`, `--io`, or $NSLAB_NF_IO.
IO_BACKENDS = ("afpacket", "afxdp")


def open_socket(io: str, dev: str, batch: int, promisc: bool) -> Any:
    """A socket with recv_batch()/send_batch()/fd/close() on `dev`."""
    if io == "afpacket":
        return RawSocket(dev, batch=batch, promisc=promisc)
    if io == "afxdp":
        from nslab.xdp.xsk import XskSocket  # AF_XDP copy mode; see docs/nf-toolkit.md

        return XskSocket(dev, batch=batch, promisc=promisc)
    raise NslabError(f"unknown NF I/O backend {io!r}: choose one of {', '.join(IO_BACKENDS)}")


class Router:
    """A running NF: `Router("lb1", report="lb1.report")`, add elements, connect, `run()`."""

    def __init__(self, name: str = "nf", report: str | Path | None = None, io: str | None = None):
        self.name = name
        self.io = io or os.environ.get("NSLAB_NF_IO") or "afpacket"
        if self.io not in IO_BACKENDS:
            raise NslabError(
                f"unknown NF I/O backend {self.io!r}: choose one of {', '.join(IO_BACKENDS)}"
            )
        self.report_path = Path(report) if report else None
        self.elements: dict[str, Element] = {}
        self.started = time.time()
        self._t0 = time.monotonic()
        self._stop = False
        self._socks: dict[str, Any] = {}
        self._counter = 0

    # -- building -------------------------------------------------------------
    def add(self, element: Element, name: str | None = None) -> Element:
        if name is None:
            self._counter += 1
            name = f"{type(element).__name__}@{self._counter}"
        if name in self.elements:
            raise NslabError(f"NF {self.name}: two elements are called {name!r}")
        element.name = name
        element.router = self
        self.elements[name] = element
        return element

    def __getitem__(self, name: str) -> Element:
        return self.elements[name]

    def devices(self) -> tuple[list[FromDevice], list[ToDevice]]:
        fr = [e for e in self.elements.values() if isinstance(e, FromDevice)]
        to = [e for e in self.elements.values() if isinstance(e, ToDevice)]
        return fr, to

    def open(self) -> None:
        """Open one socket per interface (AF_PACKET or AF_XDP), shared by its
        FromDevice and ToDevice."""
        fr, to = self.devices()
        for e in [*fr, *to]:
            if e.sock is None:
                if e.dev not in self._socks:
                    promisc = getattr(e, "promisc", True)
                    batch = getattr(e, "batch", 64)
                    self._socks[e.dev] = open_socket(self.io, e.dev, batch, promisc)
                e.open(self._socks[e.dev])

    # -- running ------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self._stop = True

    def run(self, duration: float | None = None, install_signals: bool = True) -> dict[str, Any]:
        """Forward until stopped (signal, `stop()`, or `duration` seconds); then
        write the report and return it."""
        if install_signals:
            # SIGHUP too: a closed terminal should still leave a report behind
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self.stop)
        if self.report_path:
            reportlib.check_path(self.report_path)  # fail now, not after the run
        try:
            self.open()
            # one line that services can wait for (lab.yaml `ready: {log: "forwarding on"}`)
            via = "" if self.io == "afpacket" else f" ({self.io})"
            print(f"{self.name}: forwarding on {', '.join(sorted(self._socks))}{via}", flush=True)
            self._loop(duration)
        finally:
            rep = self.report()
            if self.report_path:
                reportlib.write(rep, self.report_path)
            for s in self._socks.values():
                s.close()
        return rep

    def _loop(self, duration: float | None) -> None:
        fr, to = self.devices()
        by_fd = {e.sock.fd: e for e in fr}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        ticking = [e for e in self.elements.values() if type(e).tick is not Element.tick]
        flush = [t.flush for t in to]
        deadline = None if duration is None else time.monotonic() + duration
        next_tick = time.monotonic() + TICK_S
        while not self._stop:
            try:
                events = poller.poll(int(TICK_S * 1000))
            except InterruptedError:
                continue
            if events:
                CLOCK[0] = time.monotonic()
            for fd, _ in events:
                src = by_fd[fd]
                # drain this interface in bursts, flushing outputs after each burst
                for _ in range(16):
                    n = src.receive()
                    for f in flush:
                        f()
                    if n < src.batch:
                        break
            now = CLOCK[0] = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                for e in ticking:
                    e.tick(now)
                for f in flush:
                    f()
                if deadline is not None and now >= deadline:
                    break

    def flush(self) -> None:
        for t in self.devices()[1]:
            t.flush()

    def report(self) -> dict[str, Any]:
        rep: dict[str, Any] = {"nf": self.name, "started": round(self.started, 3)}
        for e in self.elements.values():
            reportlib.merge(rep, e.stats())
        return reportlib.finish(rep, time.monotonic() - self._t0)


def main_for(router: Router, duration: float | None = None) -> int:
    """Run a router as a program: print the report table when done."""
    try:
        rep = router.run(duration)
    except NslabError as exc:
        print(f"{router.name}: error: {exc}", file=sys.stderr)
        return 1
    print(reportlib.table(rep), end="", flush=True)
    return 0
