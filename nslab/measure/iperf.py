"""iperf3 between two nodes, with the JSON report parsed."""

from __future__ import annotations

import json
import os
import select
import subprocess
from dataclasses import dataclass, field
from typing import Any

from nslab.measure.runner import LocalRunner, MeasureError, Runner, run
from nslab.ports import free_port
from nslab.wait import WaitTimeout, wait_until


@dataclass
class IperfResult:
    raw: dict[str, Any]
    sent_bps: float
    received_bps: float
    retransmits: int | None
    intervals: list[tuple[float, float]] = field(default_factory=list)  # (end s, bit/s)
    lost_pct: float | None = None  # UDP only

    @property
    def mbps(self) -> float:
        """Goodput seen by the receiver, Mbit/s."""
        return self.received_bps / 1e6

    def __str__(self) -> str:
        extra = f", {self.retransmits} retransmits" if self.retransmits is not None else ""
        return f"{self.mbps:.1f} Mbit/s received{extra}"


def parse_iperf3(doc: dict[str, Any]) -> IperfResult:
    if doc.get("error"):
        raise MeasureError(f"iperf3: {doc['error']}")
    end = doc.get("end", {})
    if "sum_received" in end:  # TCP
        sent, recv = end["sum_sent"], end["sum_received"]
        retr = sent.get("retransmits")
        lost = None
    else:  # UDP: one "sum" block, receiver loss in it
        s = end.get("sum", {})
        sent = recv = s
        retr = None
        lost = s.get("lost_percent")
    ivals = [
        (float(i["sum"]["end"]), float(i["sum"]["bits_per_second"]))
        for i in doc.get("intervals", [])
        if "sum" in i
    ]
    return IperfResult(
        doc,
        float(sent.get("bits_per_second", 0)),
        float(recv.get("bits_per_second", 0)),
        retr,
        ivals,
        lost,
    )


def iperf3(
    runner: Runner | None,
    client: str | None,
    server: str | None,
    server_ip: str,
    seconds: float = 3.0,
    port: int | None = None,
    udp: bool = False,
    bitrate: str | None = None,
    parallel: int = 1,
    reverse: bool = False,
    interval_s: float = 0.5,
) -> IperfResult:
    """Run an iperf3 server on `server` (one test, then it exits) and a client
    on `client` towards `server_ip`; returns the client's JSON report."""
    runner = runner or LocalRunner()
    port = port or free_port()
    srv = runner.popen(
        server,
        ["iperf3", "-s", "-1", "--forceflush", "-p", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_listening(srv, 5.0)
        cmd = ["iperf3", "-c", server_ip, "-p", str(port), "-t", f"{seconds:g}", "-J"]
        cmd += ["-i", f"{interval_s:g}", "-P", str(parallel)]
        if udp:
            cmd += ["-u", "-b", bitrate or "100M"]
        elif bitrate:
            cmd += ["-b", bitrate]
        if reverse:
            cmd.append("-R")
        res = run(runner, client, cmd, timeout=seconds + 20)
        try:
            doc = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise MeasureError(
                f"iperf3 client on {client or 'host'} gave no report: {res.stderr.strip() or res.stdout[:200]}"
            ) from None
        return parse_iperf3(doc)
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait(timeout=5)
        if srv.stdout:
            srv.stdout.close()


def _wait_listening(srv: subprocess.Popen, timeout: float) -> None:
    # raw reads on the fd: a buffered readline() would hide lines from select()
    buf = bytearray()
    fd = srv.stdout.fileno()

    def listening() -> bool:
        r, _, _ = select.select([fd], [], [], 0.1)
        chunk = os.read(fd, 4096) if r else b""
        buf.extend(chunk)
        if b"listening" in buf.lower():
            return True
        if not chunk and srv.poll() is not None:
            raise MeasureError(f"iperf3 server exited: {buf.decode(errors='replace').strip()}")
        return False

    try:
        wait_until(listening, timeout, interval=0, what="the iperf3 server to listen")
    except WaitTimeout as exc:
        raise MeasureError(str(exc)) from None
