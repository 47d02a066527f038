"""ping (iputils) from a node, parsed into RTT samples."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nslab.measure.latency import Latencies
from nslab.measure.runner import MeasureError, Runner, run

_REPLY = re.compile(r"icmp_seq=(\d+).*?time=([\d.]+) ms")
_STATS = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class PingResult:
    src: str | None
    dst: str
    sent: int
    received: int
    rtts_ms: list[float] = field(default_factory=list)
    output: str = ""

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0

    @property
    def ok(self) -> bool:
        return self.received > 0

    @property
    def latencies(self) -> Latencies:
        return Latencies(list(self.rtts_ms), "ms", self.sent - self.received)

    def __str__(self) -> str:
        rtt = f", rtt {self.latencies}" if self.rtts_ms else ""
        return f"ping {self.src or 'host'} -> {self.dst}: {self.received}/{self.sent} replies{rtt}"


def parse_ping(text: str, src: str | None, dst: str, count: int) -> PingResult:
    rtts = [float(m.group(2)) for m in _REPLY.finditer(text)]
    m = _STATS.search(text)
    sent, received = (int(m.group(1)), int(m.group(2))) if m else (count, len(rtts))
    return PingResult(src, dst, sent, received, rtts, text)


def ping(
    runner: Runner | None,
    node: str | None,
    dst: str,
    count: int = 3,
    interval_s: float = 0.2,
    wait_s: float = 1.0,
    size: int | None = None,
) -> PingResult:
    """`count` echo requests from `node` to IP `dst`; never raises for loss
    (loss is an observation), only when ping cannot run at all."""
    if count < 1 or count > 100000:
        raise ValueError("count must be 1..100000")
    cmd = ["ping", "-n", "-c", str(count), "-i", f"{interval_s:g}", "-W", f"{wait_s:g}"]
    if size is not None:
        cmd += ["-s", str(size)]
    cmd.append(dst)
    res = run(runner, node, cmd, timeout=count * interval_s + wait_s + 10)
    if res.returncode not in (0, 1):
        raise MeasureError(f"ping {dst} from {node or 'host'} failed: {res.stderr.strip()}")
    return parse_ping(res.stdout, node, dst, count)
