"""The grader's own instruments: each observes a running lab and returns
numbers, never trusting what student code says about itself.

All tools take a *runner* (anything with `exec(node, cmd, timeout=...)` and
`popen(node, cmd, **kw)`, such as an engine `Lab` or `LocalRunner`) and a
node name; node None means the host's root namespace.
"""

from nslab.measure.capture import Capture, capture
from nslab.measure.iperf import IperfResult, iperf3
from nslab.measure.latency import Latencies, LatencySampler, percentile
from nslab.measure.openflow import Flow, PortStats, dump_flows, packets_to_controller, port_stats
from nslab.measure.ping import PingResult, ping
from nslab.measure.probe import HttpResult, TcpResult, http_request, tcp_connect
from nslab.measure.runner import LocalRunner, MeasureError, Runner

__all__ = [
    "Capture",
    "Flow",
    "HttpResult",
    "IperfResult",
    "Latencies",
    "LatencySampler",
    "LocalRunner",
    "MeasureError",
    "PingResult",
    "PortStats",
    "Runner",
    "TcpResult",
    "capture",
    "dump_flows",
    "http_request",
    "iperf3",
    "packets_to_controller",
    "percentile",
    "ping",
    "port_stats",
    "tcp_connect",
]
