"""Packet capture with tcpdump, parsed with scapy.

with capture(lab, "sp1:eth1", "arp") as cap:
    ...                   # traffic
len(cap.packets)          # after the block: parsed packets (pcap at cap.path)
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from nslab.kinds import get as get_kind
from nslab.measure.runner import LocalRunner, MeasureError, Runner
from nslab.wait import WaitTimeout, wait_until


class Capture:
    """tcpdump on one interface, in the root namespace (node None) or in a
    node's namespace, bounded in packets (`max_packets`) and bytes per packet."""

    def __init__(
        self,
        iface: str,
        bpf: str = "",
        runner: Runner | None = None,
        node: str | None = None,
        path: str | Path | None = None,
        max_packets: int = 100000,
        snaplen: int = 256,
    ):
        self.iface, self.bpf, self.node = iface, bpf, node
        self.runner = runner or LocalRunner()
        self.max_packets, self.snaplen = max_packets, snaplen
        if path is None:
            fd, path = tempfile.mkstemp(prefix="nslab-cap-", suffix=".pcap")
            os.close(fd)
        self.path = Path(path)
        self._proc: subprocess.Popen | None = None
        self._packets: list[Any] | None = None
        self.stderr = ""

    def start(self) -> Capture:
        cmd = ["tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-Z", "root"]
        cmd += ["-s", str(self.snaplen)]
        cmd += ["-c", str(self.max_packets), "-w", str(self.path)]
        if self.bpf:
            cmd.append(self.bpf)
        # node None: the root namespace, whatever the runner (an engine Lab needs a node)
        runner = self.runner if self.node is not None else LocalRunner()
        self._proc = runner.popen(self.node, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        fd = self._proc.stderr.fileno()
        buf = bytearray()

        def listening() -> bool:
            r, _, _ = select.select([fd], [], [], 0.1)
            chunk = os.read(fd, 4096) if r else b""
            buf.extend(chunk)
            if b"listening on" in buf:
                return True
            if self._proc.poll() is not None and not chunk:
                err = buf.decode(errors="replace").strip()
                raise MeasureError(f"tcpdump -i {self.iface} {self.bpf!r} failed: {err}")
            return False

        try:
            wait_until(listening, 10, interval=0, what=f"tcpdump on {self.iface} to start")
        except WaitTimeout as exc:
            self.stop()
            raise MeasureError(str(exc)) from None
        self.stderr = buf.decode(errors="replace")
        return self

    def stop(self) -> None:
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            time.sleep(0.2)  # let the last packets reach the file (-U)
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if p.stderr:
            self.stderr += p.stderr.read().decode(errors="replace")
            p.stderr.close()
        self._proc = None

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def packets(self) -> list[Any]:
        """scapy packets of the capture (read once, after stop)."""
        if self._packets is None:
            self.stop()
            import scapy.layers.inet  # noqa: F401 - registers Ether/IP/TCP/UDP/ICMP/ARP for rdpcap
            import scapy.layers.inet6  # noqa: F401
            import scapy.layers.l2  # noqa: F401
            from scapy.utils import rdpcap  # slow import: only when packets are looked at

            self._packets = list(rdpcap(str(self.path))) if self.path.stat().st_size else []
        return self._packets

    def count(self, predicate: Any = None) -> int:
        return sum(1 for p in self.packets if predicate is None or predicate(p))

    def remove(self) -> None:
        self.stop()
        self.path.unlink(missing_ok=True)


def capture(runner: Runner | None, where: str, bpf: str = "", **kw: Any) -> Capture:
    """A capture on `where`: 'node:iface' of a lab (needs a runner with
    `ifname`/`topology`, e.g. an engine Lab), or a plain interface name in
    the root namespace. Use it as a context manager."""
    node = None
    iface = where
    if ":" in where and runner is not None and hasattr(runner, "ifname"):
        n, i = where.split(":", 1)
        iface = runner.ifname(n, i)
        in_root = (
            hasattr(runner, "topology") and get_kind(runner.topology.nodes[n].kind).root_namespace
        )
        node = None if in_root else n
    return Capture(iface, bpf, runner=runner, node=node, **kw)
