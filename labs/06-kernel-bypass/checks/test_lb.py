"""Part 2: xdp_lb, an L4 load balancer at the driver hook.

The grader configures `config` and `backends` with the topology's real
addresses, runs SYNs of flows from a secret seed through BPF_PROG_TEST_RUN
and checks every output frame byte by byte (backend's MACs and address,
valid IPv4 and TCP checksums, nothing else changed), the spread over
backends, stickiness when the backend table changes, the replies' rewrite
back to the VIP, and traffic that is not the service's. Last, it attaches
the program to both lb interfaces and fetches pages through the VIP."""

from __future__ import annotations

import json
import struct

import pytest
import reference as ref
from conftest import offloads_off

from nslab.errors import NslabError
from nslab.measure import http_request
from nslab.xdp import bpf, loader

NAMES = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
FLOWS = 60


def _link(lab, node: str, iface: str = "eth0") -> tuple[int, str]:
    r = lab.exec(node, ["ip", "-j", "link", "show", "dev", iface])
    d = json.loads(r.stdout)[0]
    return d["ifindex"], d["address"]


@pytest.fixture(scope="session")
def setup(lab) -> ref.LbSetup:
    net = lab.params.get("net", 6)
    c_idx, c_mac = _link(lab, "lb", "eth0")
    b_idx, b_mac = _link(lab, "lb", "eth1")
    backends = [(lab.ip(b), _link(lab, b)[1]) for b in ("b1", "b2", "b3")]
    return ref.LbSetup(
        f"10.{net}.2.100", 80, _link(lab, "client")[1], c_mac, b_mac, c_idx, b_idx, backends
    )


def configure(o: loader.BpfObject, setup: ref.LbSetup) -> None:
    sizes = {"config": (4, 36), "backends": (4, 12), "flows": (8, 12)}
    for name, (ks, vs) in sizes.items():
        try:
            m = o.map(name)
        except NslabError as exc:
            pytest.fail(f"xdp_lb.c: {exc}")
        if (m.info.key_size, m.info.value_size) != (ks, vs):
            pytest.fail(
                f"map {name}: key/value are {m.info.key_size}/{m.info.value_size} bytes, the lab's "
                f"layout is {ks}/{vs}: keep the starter's structs"
            )
    o.map("config").set(b"\0" * 4, setup.config())
    for i, (ip, mac) in enumerate(setup.backends):
        o.map("backends").set(struct.pack("=I", i), ref.backend_val(ip, mac))
    for k in o.map("flows").keys():
        o.map("flows").delete(k)


@pytest.fixture(scope="session")
def lb_run(lab, obj, setup, rng, style):
    o = obj("lb")
    configure(o, setup)
    net = lab.params.get("net", 6)
    flows = []
    seen = set()
    while len(flows) < FLOWS:
        f = (
            f"10.{net}.{rng.randrange(100, 250)}.{rng.randrange(1, 255)}",
            rng.randrange(1024, 65535),
        )
        if f not in seen:
            seen.add(f)
            flows.append(f)
    res: dict = {"errors": [], "chosen": {}, "sticky": [], "replies": [], "new_on_4th": 0}
    for client, sport in flows:
        pkt = ref.lb_syn(rng, setup, client, sport, style)
        r = o.run(pkt)
        if r.verdict != bpf.XDP_REDIRECT:
            res["errors"].append(
                f"SYN {client}:{sport} -> VIP: expected XDP_REDIRECT, observed {NAMES.get(r.verdict, r.verdict)}"
            )
            continue
        why, chosen = ref.lb_check_forward(pkt, r.data, setup)
        if why:
            res["errors"].append(f"SYN {client}:{sport} -> VIP: {why}")
        if chosen:
            res["chosen"][(client, sport)] = chosen
            pkt2 = ref.lb_syn(rng, setup, client, sport, style)
            again = o.run(pkt2)
            chosen2 = (
                ref.lb_check_forward(pkt2, again.data, setup)[1] if again.verdict == 4 else None
            )
            if chosen2 != chosen:
                res["sticky"].append(f"flow {client}:{sport}: first {chosen}, then {chosen2}")
    # replies of every balanced flow, and one from the wrong backend
    macs = dict(setup.backends)
    if not res["chosen"]:
        res["replies"].append("no SYN was balanced to a backend, so no reply could be tried")
    for (client, sport), b in list(res["chosen"].items())[:20]:
        pkt = ref.lb_reply(setup, b, macs[b], client, sport)
        r = o.run(pkt)
        if r.verdict != bpf.XDP_REDIRECT:
            res["replies"].append(
                f"reply {b}:80 -> {client}:{sport}: expected XDP_REDIRECT, observed {NAMES.get(r.verdict, r.verdict)}"
            )
        else:
            why = ref.lb_check_reply(pkt, r.data, setup)
            if why:
                res["replies"].append(f"reply {b}:80 -> {client}:{sport}: {why}")
        other = next(ip for ip, _ in setup.backends if ip != b)
        r = o.run(ref.lb_reply(setup, other, macs[other], client, sport))
        if r.verdict != bpf.XDP_PASS:
            res["replies"].append(
                f"a packet from {other}:80 to {client}:{sport}, whose flow went to {b}: expected XDP_PASS, observed {NAMES.get(r.verdict, r.verdict)}"
            )
    # the backend table changes: rotated, and a fourth backend added
    table = setup.backends[1:] + setup.backends[:1] + [(f"10.{net}.1.14", "02:00:00:00:06:14")]
    for i, (ip, mac) in enumerate(table):
        o.map("backends").set(struct.pack("=I", i), ref.backend_val(ip, mac))
    moved = ref.LbSetup(**{**setup.__dict__, "backends": table})
    o.map("config").set(b"\0" * 4, moved.config())
    for (client, sport), b in res["chosen"].items():
        r = o.run(ref.lb_syn(rng, moved, client, sport, style))
        now = (
            ".".join(str(x) for x in r.data[30:34]) if r.verdict == 4 and len(r.data) > 34 else None
        )
        if now != b:
            res["sticky"].append(
                f"flow {client}:{sport} went to {b}, after the table changed to {now}"
            )
    for i in range(40):
        client = f"10.{net}.99.{i + 1}"
        r = o.run(ref.lb_syn(rng, moved, client, 40000 + i, style))
        if r.verdict == 4 and r.data[30:34] == bytes([10, net, 1, 14]):
            res["new_on_4th"] += 1
    # restore the table of the topology for the check on the wire
    configure(o, setup)
    return res


@pytest.mark.points(1)
def test_lb_loads(obj, setup):
    """xdp_lb.c compiles and the verifier accepts it"""
    o = obj("lb")
    o.prog("xdp_lb")
    configure(o, setup)


@pytest.mark.points(3)
def test_lb_rewrites(lb_run):
    """SYNs to the VIP leave by XDP_REDIRECT, rewritten to a backend with valid checksums"""
    e = lb_run["errors"]
    assert not e, f"{len(e)} of {FLOWS} SYNs wrong, e.g.:\n  " + "\n  ".join(e[:4])


@pytest.mark.points(1)
def test_lb_spreads(lb_run, record):
    """new flows spread over all backends"""
    counts: dict[str, int] = {}
    for b in lb_run["chosen"].values():
        counts[b] = counts.get(b, 0) + 1
    record.value("flows per backend", json.dumps(counts))
    low = FLOWS // 3 * 0.25  # a fair hash misses this with odds of about 1e-5
    assert len(counts) == 3 and min(counts.values()) >= low, (
        f"{FLOWS} flows by backend: {counts}; expected every backend at least {low:g}"
    )


@pytest.mark.points(2)
def test_lb_sticky(lb_run):
    """a flow keeps its backend (also after the backend table changed); new flows use the new table"""
    s = lb_run["sticky"]
    assert not s, f"{len(s)} flow(s) changed backend, e.g.:\n  " + "\n  ".join(s[:4])
    assert lb_run["new_on_4th"] > 0, "40 new flows after a 4th backend was added: none went to it"


@pytest.mark.points(2)
def test_lb_replies(lb_run):
    """replies get the VIP back as source, MACs towards the client, valid checksums"""
    r = lb_run["replies"]
    assert not r, f"{len(r)} reply problem(s), e.g.:\n  " + "\n  ".join(r[:4])


@pytest.mark.points(1)
def test_lb_other_traffic(obj, setup, rng):
    """not the service: UDP/other ports/fragments to the VIP dropped, the rest passed"""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    o = obj("lb")
    eth = Ether(src=setup.client_mac, dst=setup.client_if_mac)
    cl = "192.0.2.7"
    cases = [
        (
            eth / IP(src=cl, dst=setup.vip) / UDP(sport=5000, dport=80),
            bpf.XDP_DROP,
            "UDP to the VIP",
        ),
        (
            eth / IP(src=cl, dst=setup.vip) / TCP(sport=5000, dport=rng.randrange(81, 9000)),
            bpf.XDP_DROP,
            "TCP to the VIP, another port",
        ),
        (
            eth / IP(src=cl, dst=setup.vip, flags="MF") / TCP(sport=5001, dport=80),
            bpf.XDP_DROP,
            "a fragment to the VIP",
        ),
        (eth / ARP(pdst=setup.vip), bpf.XDP_PASS, "ARP"),
        (
            eth / IP(src=cl, dst=setup.backends[0][0]) / TCP(sport=5002, dport=22),
            bpf.XDP_PASS,
            "TCP to a backend directly",
        ),
        (
            eth / Dot1Q(vlan=5) / IP(src=cl, dst="192.0.2.9") / TCP(sport=5003, dport=80),
            bpf.XDP_PASS,
            "a VLAN-tagged frame",
        ),
    ]
    wrong = []
    for pkt, want, why in cases:
        r = o.run(bytes(pkt))
        if r.verdict != want:
            wrong.append(
                f"{why}: expected {NAMES[want]}, observed {NAMES.get(r.verdict, r.verdict)}"
            )
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="session")
def lb_wire(lab, obj, setup):
    """The program on both lb interfaces, HTTP through the VIP from client,
    the grader's captures on the client's link and on the backends' bridge."""
    import sys
    import time

    from nslab.measure import capture

    o = obj("lb")
    configure(o, setup)
    for node in ("client", "b1", "b2", "b3"):
        offloads_off(lab, node)
    for iface in ("eth0", "eth1"):
        offloads_off(lab, "lb", iface)
    servers = [
        lab.popen(b, [sys.executable, "-m", "nslab.nf.backend", "--name", b], stdout=-3, stderr=-3)
        for b in ("b1", "b2", "b3")
    ]
    pin = o.pin("xdp_lb")
    art = lab.logs_dir
    caps = [
        capture(lab.engine, "client:eth0", "tcp port 80", path=art / "lb-client.pcap"),
        capture(lab.engine, "sw:eth1", "tcp port 80", path=art / "lb-backends.pcap"),
    ]
    seen: dict[str, int] = {}
    failed: list[str] = []
    tried = 0
    try:
        for iface in ("eth0", "eth1"):
            r = lab.exec("lb", loader.attach_argv(iface, pin, "generic"))
            assert r.returncode == 0, f"grader could not attach the program: {r.stderr.strip()}"
        for c in caps:
            c.start()
        time.sleep(1.0)  # the backends' servers start
        for i in range(15):
            tried += 1
            res = http_request(lab, "client", f"http://{setup.vip}:80/page{i}", timeout_s=3)
            if res.ok:
                b = res.headers.get("X-Backend") or res.headers.get("x-backend", "?")
                seen[b] = seen.get(b, 0) + 1
            else:
                failed.append(res.error or str(res.status))
                if len(failed) >= 3 and not seen:
                    break  # nothing gets through: do not wait for every timeout
    finally:
        for c in caps:
            c.stop()
        for iface in ("eth0", "eth1"):
            lab.exec("lb", loader.detach_argv(iface, "generic"))
        for srv in servers:
            srv.kill()
            srv.wait()
    return {"seen": seen, "failed": failed, "tried": tried, "client": caps[0], "backends": caps[1]}


@pytest.mark.points(2)
def test_lb_on_the_wire(lb_wire, record):
    """attached to lb's two interfaces: HTTP through the VIP reaches every backend"""
    seen, failed = lb_wire["seen"], lb_wire["failed"]
    record.value("answers per backend", json.dumps(seen))
    assert not failed, (
        f"{len(failed)} of {lb_wire['tried']} requests to the VIP failed, e.g. {failed[0]}"
    )
    assert len(seen) >= 2, f"all answers came from {list(seen)}: expected at least 2 backends"


@pytest.mark.points(1)
def test_lb_frames_on_the_wire(lb_wire, setup):
    """the grader's captures: backends see their own address and MAC, the client only the VIP; checksums valid"""
    macs = dict(setup.backends)
    wrong = []
    to_backends = 0
    for p in lb_wire["backends"].packets:
        raw = bytes(p)
        if len(raw) < 34 or raw[12:14] != b"\x08\x00":
            continue
        dst = ".".join(str(b) for b in raw[30:34])
        if dst == setup.vip:
            wrong.append("a frame to the VIP reached the backends' side unrewritten")
        elif dst in macs and raw[36:38] == b"\x00\x50":
            to_backends += 1
            if raw[0:6] != ref._mac(macs[dst]):
                wrong.append(f"a frame to {dst} carries MAC {raw[0:6].hex(':')}, not {macs[dst]}")
            why = ref.checksums_ok(raw)
            if why:
                wrong.append(f"a frame to backend {dst}: {why}")
    client_frames = 0
    for p in lb_wire["client"].packets:
        raw = bytes(p)
        if len(raw) < 34 or raw[12:14] != b"\x08\x00" or raw[34:36] != b"\x00\x50":
            continue
        client_frames += 1
        src = ".".join(str(b) for b in raw[26:30])
        if src != setup.vip:
            wrong.append(f"the client received a frame from {src}:80, not from the VIP")
        why = ref.checksums_ok(raw)
        if why:
            wrong.append(f"a reply to the client: {why}")
    assert to_backends and client_frames, (
        f"captured {to_backends} frames towards the backends and {client_frames} replies at the client"
    )
    assert not wrong, f"{len(wrong)} wrong frame(s), e.g.:\n  " + "\n  ".join(
        sorted(set(wrong))[:4]
    )
