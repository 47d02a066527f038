"""The grader's instruments against real namespaces, veths, tcpdump, iperf3
and an Open vSwitch bridge (userspace datapath). Everything created carries
the prefix tgrd and is removed by the fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from nslab import measure
from nslab.measure.openflow import parse_flows, parse_ports
from nslab.netns import offloads_off
from nslab.wait import wait_until

pytestmark = pytest.mark.root
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def two_ns():
    """Namespaces a (10.213.0.1) and b (10.213.0.2) joined by a veth pair."""
    tag = f"{os.getpid() % 100000}"
    a, b = f"tgrd-m{tag}-a", f"tgrd-m{tag}-b"
    va, vb = f"tgrd{tag}a", f"tgrd{tag}b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, ip in ((a, va, "10.213.0.1/24"), (b, vb, "10.213.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield measure.LocalRunner({"a": a, "b": b}), va, vb
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@needs_root
def test_ping_counts_replies_and_loss(two_ns):
    runner, _, _ = two_ns
    r = measure.ping(runner, "a", "10.213.0.2", count=4, interval_s=0.05)
    assert (r.sent, r.received, len(r.rtts_ms)) == (4, 4, 4)
    assert r.loss_pct == 0 and r.latencies.p50 > 0
    lost = measure.ping(runner, "a", "10.213.0.9", count=2, interval_s=0.05, wait_s=0.3)
    assert lost.received == 0 and lost.loss_pct == 100.0


@needs_root
def test_iperf3_reports_goodput_per_interval(two_ns):
    runner, _, _ = two_ns
    r = measure.iperf3(runner, "a", "b", "10.213.0.2", seconds=1, interval_s=0.25)
    assert r.mbps > 10, r  # a veth pair moves Gbit/s; 10 Mbit/s holds on a loaded box
    assert len(r.intervals) >= 3 and r.raw["start"]["test_start"]["duration"] == 1
    limited = measure.iperf3(runner, "a", "b", "10.213.0.2", seconds=1, bitrate="20M")
    assert limited.mbps < 30, limited  # iperf3's own pacing: the number is what was observed


@needs_root
def test_capture_sees_exactly_the_echo_requests(two_ns, tmp_path):
    runner, _, vb = two_ns
    with measure.Capture(
        vb, "icmp[icmptype] == icmp-echo", runner=runner, node="b", path=tmp_path / "c.pcap"
    ) as cap:
        measure.ping(runner, "a", "10.213.0.2", count=3, interval_s=0.05)
    assert cap.count() == 3
    assert all(p["IP"].src == "10.213.0.1" for p in cap.packets)
    assert (tmp_path / "c.pcap").stat().st_size > 0


@needs_root
def test_capture_of_a_missing_interface_fails_clearly():
    with pytest.raises(measure.MeasureError, match="tgrd-nosuch"):
        measure.Capture("tgrd-nosuch", "arp").start()


@needs_root
def test_tcp_and_http_probes_inside_a_namespace(two_ns, tmp_path):
    runner, _, _ = two_ns
    (tmp_path / "hello.txt").write_text("hi there")
    srv = runner.popen(
        "b",
        [sys.executable, "-m", "http.server", "--bind", "10.213.0.2", "8213", "-d", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: measure.tcp_connect(runner, "a", "10.213.0.2", 8213, timeout_s=0.2).ok,
            10,
            interval=0.1,
            what="the HTTP server to accept on 10.213.0.2:8213",
        )
        got = measure.http_request(runner, "a", "http://10.213.0.2:8213/hello.txt")
        assert (got.status, got.text) == (200, "hi there") and got.elapsed_ms > 0
        post = measure.http_request(
            runner, "a", "http://10.213.0.2:8213/x", method="POST", body="a=1"
        )
        assert post.status == 501  # the stock http.server refuses POST: observed, not assumed
        many = measure.tcp_connect(runner, "a", "10.213.0.2", 8213, count=5)
        assert many.ok and len(many.connect_ms) == 5
    finally:
        srv.kill()
        srv.wait()
    closed = measure.tcp_connect(runner, "a", "10.213.0.2", 8213, timeout_s=0.5)
    assert not closed.ok and "Refused" in closed.errors[0]
    dead = measure.http_request(runner, "a", "http://10.213.0.2:8213/", timeout_s=0.5)
    assert dead.status is None and dead.error


def test_percentiles_match_numpy():
    import numpy as np

    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.5]
    for p in (10, 50, 90, 99, 100):  # nslab's one definition: nearest rank (nslab.stats)
        assert measure.percentile(xs, p) == np.percentile(xs, p, method="inverted_cdf")
    lat = measure.Latencies(xs)
    assert lat.p50 == 4.0 and lat.summary()["max"] == 10.0
    calls = iter(range(10))

    def flaky():
        if next(calls) % 3 == 0:
            raise OSError("no answer")

    sampled = measure.LatencySampler(flaky, n=9).run()
    assert len(sampled.samples) == 6 and sampled.failures == 3


FLOWS = """OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x0, duration=0.054s, table=0, n_packets=7, n_bytes=588, priority=10,ip,in_port=3,nw_dst=10.1.2.3 actions=LOCAL
 cookie=0x0, duration=0.030s, table=0, n_packets=2, n_bytes=84, priority=0 actions=CONTROLLER:65535
 cookie=0x5, duration=0.008s, table=1, n_packets=0, n_bytes=0, idle_timeout=30, priority=5,arp actions=drop
"""
PORTS = """OFPST_PORT reply (OF1.3) (xid=0x2): 2 ports
  port LOCAL: rx pkts=0, bytes=0, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=1, bytes=2, drop=3, errs=0, coll=0
           duration=0.096s
  port  3: rx pkts=10, bytes=1000, drop=1, errs=0, frame=0, over=0, crc=0
           tx pkts=7, bytes=700, drop=0, errs=0, coll=0
"""


def test_parse_ovs_ofctl_output():
    f = parse_flows(FLOWS)
    assert [(x.table, x.priority, x.n_packets) for x in f] == [(0, 10, 7), (0, 0, 2), (1, 5, 0)]
    assert f[0].match == "ip,in_port=3,nw_dst=10.1.2.3" and f[0].actions == "LOCAL"
    assert f[1].is_table_miss and f[1].to_controller and not f[0].to_controller
    assert f[2].cookie == 5 and f[2].match == "arp"
    p = parse_ports(PORTS)
    assert p["3"].rx_packets == 10 and p["3"].tx_bytes == 700 and p["LOCAL"].tx_dropped == 3


@pytest.fixture
def ovs_between(two_ns):
    """The veth pair cut in two by an OVS bridge (userspace datapath):
    a -- br(port 1, port 2) -- b."""
    if (
        shutil.which("ovs-vsctl") is None
        or subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True).returncode
    ):
        pytest.skip("Open vSwitch is not running (sudo bash scripts/provision.sh)")
    runner, va, vb = two_ns
    tag = f"{os.getpid() % 100000}"
    br = f"tgrd{tag}br"
    pa, pb = f"tgrd{tag}x", f"tgrd{tag}y"
    a, b = runner.namespaces["a"], runner.namespaces["b"]
    try:
        # replace the direct pair by a->pa and pb->b through the bridge
        subprocess.run(["ip", "-n", a, "link", "del", va], capture_output=True)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", pa)
        sh("ip", "link", "add", vb, "netns", b, "type", "veth", "peer", "name", pb)
        for ns, dev, ip in ((a, va, "10.213.0.1/24"), (b, vb, "10.213.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for dev in (pa, pb):
            sh("ip", "link", "set", dev, "up")
        ends = [(f"/run/netns/{a}", va), (f"/run/netns/{b}", vb)]
        offloads_off([*ends, ("/proc/self/ns/net", pa), ("/proc/self/ns/net", pb)])
        sh(
            "ovs-vsctl",
            "add-br",
            br,
            "--",
            "set",
            "bridge",
            br,
            "datapath_type=netdev",
            "fail_mode=secure",
        )
        sh("ovs-vsctl", "add-port", br, pa, "--", "set", "interface", pa, "ofport_request=1")
        sh("ovs-vsctl", "add-port", br, pb, "--", "set", "interface", pb, "ofport_request=2")
        yield runner, br
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", br], capture_output=True)
        for dev in (pa, pb):
            subprocess.run(["ip", "link", "del", dev], capture_output=True)


@needs_root
def test_openflow_counters_show_who_forwarded(ovs_between):
    runner, br = ovs_between
    of = ["ovs-ofctl", "-O", "OpenFlow13"]
    sh(*of, "del-flows", br)
    sh(*of, "add-flow", br, "priority=10,in_port=1 actions=output:2")
    sh(*of, "add-flow", br, "priority=10,in_port=2 actions=output:1")
    sh(*of, "add-flow", br, "priority=0 actions=CONTROLLER:65535")
    ok = measure.ping(runner, "a", "10.213.0.2", count=3, interval_s=0.1)
    assert ok.received == 3, ok.output
    # OVS refreshes flow counters from the datapath about twice a second: poll (bounded)
    wait_until(
        lambda: sum(f.n_packets for f in measure.dump_flows(br) if f.priority == 10) >= 6,
        5,
        interval=0.2,
        what="6 packets counted by the two forwarding flows",
    )
    assert measure.packets_to_controller(br) == 0
    ports = measure.port_stats(br)
    assert ports["1"].rx_packets >= 3 and ports["2"].tx_packets >= 3
    # without the return flow, replies end at the table-miss (packet-ins)
    sh(*of, "del-flows", br, "--strict", "priority=10,in_port=2")
    before = measure.packets_to_controller(br)
    lost = measure.ping(runner, "a", "10.213.0.2", count=3, interval_s=0.1, wait_s=0.3)
    assert lost.received == 0
    wait_until(
        lambda: measure.packets_to_controller(br) - before >= 3,
        5,
        interval=0.2,
        what="3 packet-ins at the controller",
    )
