"""OpenFlow state of an Open vSwitch bridge, as OVS itself counts it
(`ovs-ofctl -O OpenFlow13`): flows with their counters, port counters."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from nslab.measure.runner import MeasureError

_STAT_KEYS = {
    "cookie",
    "duration",
    "table",
    "n_packets",
    "n_bytes",
    "idle_timeout",
    "hard_timeout",
    "idle_age",
    "hard_age",
    "importance",
    "send_flow_rem",
    "reset_counts",
    "no_packet_counts",
    "no_byte_counts",
}


@dataclass
class Flow:
    table: int
    priority: int
    match: str  # e.g. "ip,in_port=3,nw_dst=10.0.0.2" ('' = match all)
    actions: str
    n_packets: int
    n_bytes: int
    cookie: int = 0
    duration_s: float = 0.0

    @property
    def to_controller(self) -> bool:
        return "CONTROLLER" in self.actions

    @property
    def is_table_miss(self) -> bool:
        return self.priority == 0 and self.match == ""

    def __str__(self) -> str:
        m = self.match or "*"
        return (
            f"table={self.table} prio={self.priority} {m} -> {self.actions} ({self.n_packets} pkts)"
        )


@dataclass
class PortStats:
    port: str  # OpenFlow port number as text, or 'LOCAL'
    rx_packets: int
    rx_bytes: int
    rx_dropped: int
    tx_packets: int
    tx_bytes: int
    tx_dropped: int


def _ofctl(args: list[str], timeout: float = 10.0) -> str:
    try:
        res = subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise MeasureError(f"ovs-ofctl {' '.join(args)} took longer than {timeout:g} s") from None
    if res.returncode != 0:
        raise MeasureError(f"ovs-ofctl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def parse_flows(text: str) -> list[Flow]:
    flows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("cookie=") or " actions=" not in line:
            continue
        left, actions = line.split(" actions=", 1)
        stats: dict[str, str] = {}
        match_parts: list[str] = []
        for tok in left.split(", "):
            for part in tok.split(","):
                k, _, v = part.partition("=")
                if k in _STAT_KEYS:
                    stats[k] = v
                elif part:
                    match_parts.append(part)
        prio = 32768
        rest = []
        for part in match_parts:
            if part.startswith("priority="):
                prio = int(part.split("=", 1)[1])
            else:
                rest.append(part)
        flows.append(
            Flow(
                table=int(stats.get("table", 0)),
                priority=prio,
                match=",".join(rest),
                actions=actions,
                n_packets=int(stats.get("n_packets", 0)),
                n_bytes=int(stats.get("n_bytes", 0)),
                cookie=int(stats.get("cookie", "0"), 16),
                duration_s=float(stats.get("duration", "0s").rstrip("s") or 0),
            )
        )
    return flows


def dump_flows(bridge: str, table: int | None = None) -> list[Flow]:
    args = ["dump-flows", bridge] + ([f"table={table}"] if table is not None else [])
    return parse_flows(_ofctl(args))


_PORT = re.compile(
    r"port\s+(\S+?):\s+rx pkts=(\d+), bytes=(\d+), drop=(\d+).*?\n\s+tx pkts=(\d+), bytes=(\d+), drop=(\d+)"
)


def parse_ports(text: str) -> dict[str, PortStats]:
    out = {}
    for m in _PORT.finditer(text):
        name = m.group(1).strip('"')
        vals = [int(m.group(i)) for i in range(2, 8)]
        out[name] = PortStats(name, *vals)
    return out


def port_stats(bridge: str) -> dict[str, PortStats]:
    """Counters per OpenFlow port ('1', '2', ..., 'LOCAL')."""
    return parse_ports(_ofctl(["dump-ports", bridge]))


def packets_to_controller(bridge: str) -> int:
    """Packets OVS sent to the controller (packet-ins), counted by OVS on the
    flows whose actions output to CONTROLLER: the student cannot fake it."""
    return sum(f.n_packets for f in dump_flows(bridge) if f.to_controller)
