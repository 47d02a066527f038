"""Lab 1 checks: the service chain napt -> ids -> lb1, observed from the
grader's captures on each hop, its own clients in h1/h2 and the NF reports.
Points as in the course: load balancer 10, NAPT 10, IDS 10."""

from __future__ import annotations

import pytest
from conftest import (
    BACKENDS,
    HOSTS,
    NAPT_OUT,
    NFS,
    PATTERNS,
    PINGS,
    VIP,
    Observed,
    flows_to,
    syns,
)


def _ip_pkts(pkts: list) -> list:
    from scapy.layers.inet import IP

    return [p for p in pkts if IP in p]


def _failed(items: list[tuple[str, dict, dict]]) -> list[str]:
    return [f"{h} {req['tag']} ({res.get('error') or res.get('status')})" for h, req, res in items]


# -- load balancer (10) ----------------------------------------------------------
@pytest.mark.points(2)
def test_vip_answers_pings(nfv: Observed, record, expect):
    """pings to the VIP 100.0.0.45 are answered"""
    record.value("warm-up pings sent", nfv.warmup_pings)
    for k in ("h1->VIP", "h2->VIP"):
        record.value(f"replies {k}", nfv.pings[k])
    for k in ("h1->VIP", "h2->VIP"):
        # one lost echo is the shared machine's, not the NF's
        expect(nfv.pings[k], ">=", PINGS - 1, f"echo replies to {PINGS} pings {k}")


@pytest.mark.points(4)
def test_round_robin_at_sw3(nfv: Observed, record, expect):
    """HTTP connections to the VIP go round robin to llm1, llm2, llm3 (seen at sw3)"""
    from scapy.layers.inet import IP, TCP

    # lb1 assigns backends in the order SYNs reach it (its input, captured at
    # lb1:eth0); it may emit them in another order (a SYN waits for ARP), so
    # the order is taken at its input and the backend at sw3 (same port and seq)
    out = {
        (p[TCP].sport, p[TCP].seq): BACKENDS.get(p[IP].dst, p[IP].dst)
        for p in syns(nfv.pcaps["sw3 from lb1"])
        if p[TCP].dport == 80
    }
    arrived = [
        (p[TCP].sport, p[TCP].seq)
        for p in syns(nfv.pcaps["to lb1"])
        if p[TCP].dport == 80 and p[IP].dst == VIP
    ]
    order = [out[k] for k in arrived if k in out]
    record.value("connections lb1 -> sw3", len(order))
    record.value("backends in order", " ".join(order) or "none")
    conns = [x for x in nfv.all_requests() if x[1]["host"] == VIP and x[1]["port"] == 80]
    made = [x for x in conns if x[2].get("connected")]
    expect(len(made), ">=", len(conns) // 2, "connections to VIP:80 the clients could open")
    # every opened connection passed lb1; a SYN whose handshake then timed out may add one
    expect(len(order), ">=", len(made), "new connections lb1 sent towards the backends")
    expect(len(order), "<=", len(conns), "new connections lb1 sent towards the backends")
    bad = [o for o in order if o not in BACKENDS.values()]
    assert not bad, f"expected SYNs to llm1-3 only, observed SYNs to {', '.join(sorted(set(bad)))}"
    names = list(BACKENDS.values())
    wrong = [
        i
        for i, (a, b) in enumerate(zip(order, order[1:], strict=False))
        if names.index(b) != (names.index(a) + 1) % 3
    ]
    assert not wrong, (
        f"expected round robin (llm1, llm2, llm3, llm1, ...), observed {' '.join(order)} "
        f"(connection {wrong[0] + 2} breaks the cycle)"
    )
    # each SYN arrived at the sw3 port of the backend it was addressed to
    for name, port_pcap in ((n, f"sw3 to {n}") for n in names):
        at_port = len([p for p in syns(nfv.pcaps[port_pcap]) if TCP in p and p[TCP].dport == 80])
        expect(at_port, "==", order.count(name), f"new connections arriving at {name}'s sw3 port")
    posts = nfv.of_kind("pa") + nfv.of_kind("pb")
    unanswered = [x for x in posts if x[2].get("status") != 200]
    expect(len(posts) - len(unanswered), "==", len(posts), "POSTs to the VIP answered with 200")


@pytest.mark.points(3)
def test_other_traffic_to_inference_zone_blocked(nfv: Observed, record, expect):
    """other traffic to the inference zone is blocked"""
    from scapy.layers.inet import ICMP, IP, TCP

    served = [x for x in nfv.of_kind("pa") if x[2].get("status") == 200]
    # a chain that forwards nothing would "block" everything: judge only a working one
    expect(len(served), ">=", 1, "POSTs to VIP:80 answered (the control: the service works)")
    probes = nfv.of_kind("direct") + nfv.of_kind("port")
    through = [f"{req['host']}:{req['port']}" for _h, req, res in probes if res.get("connected")]
    record.value("blocked connection attempts that succeeded", len(through))
    assert not through, f"expected connections to {', '.join(through)} to fail, observed them open"
    expect(nfv.pings["h1->llm2"], "==", 0, "echo replies from llm2 (100.0.0.41) pinged directly")
    leaked = [
        p
        for p in _ip_pkts(nfv.pcaps["sw3 from lb1"])
        if p[IP].src == NAPT_OUT
        and ((TCP in p and p[TCP].dport != 80) or (ICMP in p and p[ICMP].type == 8))
    ]
    expect(len(leaked), "==", 0, "packets of users to other ports or pings seen at sw3")


# -- NAPT (10) -------------------------------------------------------------------
@pytest.mark.points(5)
def test_napt_source_address(nfv: Observed, record, expect):
    """on the 100.0.0.0/24 side, user traffic carries the NAPT address 100.0.0.1"""
    from scapy.layers.inet import IP, TCP

    ips = _ip_pkts(nfv.pcaps["service side"])
    inside = [p for p in ips if p[IP].src.startswith("10.0.0.") or p[IP].dst.startswith("10.0.0.")]
    to_vip = [p for p in ips if p[IP].dst == VIP]
    wrong_src = sorted({p[IP].src for p in to_vip if p[IP].src != NAPT_OUT})
    record.value("packets to the VIP on napt's outside link", len(to_vip))
    record.value("packets with a 10.0.0.x address there", len(inside))
    sent = sum(1 for x in nfv.all_requests() if x[2].get("connected") and x[1]["host"] == VIP)
    # judged on traffic that got through: a chain that passes nothing shows nothing
    expect(len(to_vip), ">=", max(sent, 1), "packets to the VIP on napt's outside link")
    expect(len(inside), "==", 0, "packets with a 10.0.0.0/24 address on the 100.0.0.0/24 side")
    assert not wrong_src, (
        f"expected source {NAPT_OUT} on every packet to the VIP, observed {', '.join(wrong_src)}"
    )
    # informative only: a NAPT may reuse a port once a connection is over
    ports = {p[TCP].sport for p in to_vip if TCP in p and p[TCP].flags == "S"}
    record.value("distinct source ports of new connections", len(ports))


@pytest.mark.points(4)
def test_napt_replies_translated_back(nfv: Observed, record, expect):
    """replies are translated back: the clients see answers from the VIP"""
    from scapy.layers.inet import IP, TCP

    for host, addr in HOSTS.items():
        good = [
            (req, res)
            for h, req, res in nfv.all_requests()
            if h == host and res.get("status") == 200
        ]
        wanted = [req for h, req, _res in nfv.all_requests() if h == host and req["tag"][0] == "p"]
        expect(len(good), ">=", len(wanted), f"requests of {host} answered")
        pkts = _ip_pkts(nfv.pcaps[host])
        back = {
            p[TCP].dport
            for p in pkts
            if TCP in p and p[IP].src == VIP and p[IP].dst == addr and p[TCP].sport == 80
        }
        missing = [req["tag"] for req, res in good if res.get("sport") not in back]
        assert not missing, (
            f"expected answers from {VIP}:80 to {addr} on each request's own port at {host}, "
            f"observed none for {', '.join(missing)}"
        )
        strangers = sorted(
            {p[IP].src for p in pkts if p[IP].src.startswith("100.0.0.") and p[IP].src != VIP}
        )
        assert not strangers, (
            f"expected {host} to see only the VIP of the service zone, observed {', '.join(strangers)}"
        )
        record.value(f"{host}: answered requests", len(good))


@pytest.mark.points(1)
def test_napt_report(nfv: Observed, record):
    """napt.report exists and its counts agree with the grader's captures"""
    _report_agrees(nfv, "napt", record)


# -- IDS (10) ---------------------------------------------------------------------
@pytest.mark.points(2)
def test_ids_passes_arp_icmp_handshakes(nfv: Observed, record, expect):
    """the IDS passes ARP, ICMP and TCP handshakes"""
    from scapy.layers.inet import ICMP, TCP
    from scapy.layers.l2 import ARP

    pkts = nfv.pcaps["to lb1"]
    arp = sum(1 for p in pkts if ARP in p and p[ARP].pdst == VIP)
    icmp = sum(1 for p in pkts if ICMP in p and p[ICMP].type == 8)
    record.value("ARP requests for the VIP at lb1", arp)
    record.value("echo requests at lb1", icmp)
    expect(icmp, ">=", 2 * PINGS - 2, "echo requests that crossed the IDS to lb1")
    blocked = nfv.of_kind("bad") + nfv.of_kind("inj")
    handshakes = [x for x in blocked if x[2].get("connected")]
    expect(
        len(handshakes), "==", len(blocked), "handshakes completed for requests the IDS stops later"
    )
    expect(
        len([p for p in syns(pkts) if TCP in p and p[TCP].dport == 80]),
        ">=",
        len(blocked),
        "SYNs to VIP:80 that reached lb1",
    )
    # napt starts with an empty ARP table and resolves the VIP during the warm-up
    expect(arp, ">=", 1, "ARP requests for the VIP that crossed the IDS to lb1")


@pytest.mark.points(3)
def test_ids_admits_post_put_blocks_other_methods(nfv: Observed, record, expect):
    """the IDS admits POST and PUT and blocks other methods (nothing of them reaches lb1)"""
    from scapy.layers.inet import TCP

    flows = flows_to(nfv.pcaps["to lb1"])
    tags = {f.tag for f in flows}
    bad = nfv.of_kind("bad")
    # what the variant did to headers (TCP timestamps on/off): 20 or 32 bytes
    hdr = sorted({4 * p[TCP].dataofs for p in nfv.pcaps["service side"] if TCP in p})
    record.value("TCP header lengths on the service side", " ".join(map(str, hdr)), "bytes")
    answered = [f"{req['method']} ({h})" for h, req, res in bad if res.get("status") is not None]
    reached = [f"{req['method']} ({h})" for h, req, _ in bad if req["tag"] in tags]
    record.value("requests with other methods sent", len(bad))
    assert not reached, (
        f"expected no bytes of {len(bad)} blocked requests at lb1, observed {', '.join(reached)}"
    )
    assert not answered, (
        f"expected no answer to blocked methods, observed answers to {', '.join(answered)}"
    )
    starts = sorted({f.payload.split(b" ", 1)[0].decode("latin-1")[:10] for f in flows})
    record.value("methods seen at lb1", " ".join(starts))
    others = [s for s in starts if s not in ("POST", "PUT")]
    assert not others, f"expected only POST and PUT requests at lb1, observed {', '.join(others)}"
    good = nfv.of_kind("pa") + nfv.of_kind("pb") + nfv.of_kind("ok")
    missing = [
        req["tag"] for _h, req, res in good if req["tag"] not in tags or res.get("status") != 200
    ]
    expect(
        len(good) - len(missing),
        "==",
        len(good),
        "POST and benign PUT requests that reached lb1 and were answered",
    )


@pytest.mark.points(3)
def test_ids_diverts_injections_to_insp(nfv: Observed, record, expect):
    """PUTs carrying injection patterns go to insp and nothing of them reaches lb1"""
    inj = nfv.of_kind("inj")
    at_insp = {f.tag for f in flows_to(nfv.pcaps["to insp"])}
    at_lb1 = flows_to(nfv.pcaps["to lb1"])
    lb1_tags = {f.tag for f in at_lb1}
    record.value("injection PUTs sent", len(inj))
    record.value("seen at insp", sum(1 for _h, r, _ in inj if r["tag"] in at_insp))
    leaked = [r["tag"] for _h, r, _ in inj if r["tag"] in lb1_tags]
    # bytes of a split request without its first segment carry no tag: look for the patterns
    patterned = [
        p
        for f in at_lb1
        for p in PATTERNS
        if p.lower().encode() in f.payload.lower() and f.payload.startswith(b"PUT")
    ]
    answered = [r["tag"] for _h, r, res in inj if res.get("status") is not None]
    assert not leaked, (
        f"expected no bytes of injection PUTs at lb1, observed requests {', '.join(leaked)}"
    )
    assert not patterned, (
        f"expected no injection pattern in PUTs at lb1, observed {', '.join(sorted(set(patterned)))}"
    )
    assert not answered, (
        f"expected no answer to injection PUTs, observed answers to {', '.join(answered)}"
    )
    missing = [r["tag"] for _h, r, _ in inj if r["tag"] not in at_insp]
    expect(len(inj) - len(missing), "==", len(inj), "injection PUTs seen at insp")


@pytest.mark.points(1)
def test_ids_passes_benign_puts(nfv: Observed, record, expect):
    """benign PUTs pass the IDS and are answered"""
    ok = nfv.of_kind("ok")
    tags = {f.tag for f in flows_to(nfv.pcaps["to lb1"])}
    insp = {f.tag for f in flows_to(nfv.pcaps["to insp"])}
    good = [r for _h, r, res in ok if res.get("status") == 200 and r["tag"] in tags]
    wrongly = [r["tag"] for _h, r, _ in ok if r["tag"] in insp]
    assert not wrongly, (
        f"expected benign PUTs to stay away from insp, observed {', '.join(wrongly)}"
    )
    expect(len(good), "==", len(ok), "benign PUTs answered (and seen at lb1)")


@pytest.mark.points(1)
def test_ids_report(nfv: Observed, record):
    """ids.report exists and its counts agree with the grader's captures"""
    _report_agrees(nfv, "ids", record)


@pytest.mark.points(1)
def test_lb1_report(nfv: Observed, record):
    """lb1.report exists and its counts agree with the grader's captures"""
    _report_agrees(nfv, "lb1", record)


# -- reports -------------------------------------------------------------------------
def _tolerance(n: int) -> int:
    # frames that crossed between the NF's start and the capture's, or that
    # the NF had not yet read at SIGTERM: retransmissions of refused requests,
    # a late ARP (frames captured after the SIGTERM are not counted at all)
    return 5 + n // 20


def _report_agrees(nfv: Observed, nf: str, record) -> None:
    rep = nfv.reports[nf]
    assert rep is not None, (
        f"expected {nf}.report (written when the NF stops on SIGTERM), observed: "
        f"{nfv.report_errors.get(nf)} (exit status {nfv.nf_exit.get(nf)})"
    )
    missing = [k for k in ("interfaces", "classes", "drops", "total_drops") if k not in rep]
    assert not missing, (
        f"expected the report keys interfaces, classes, drops, total_drops; {nf}.report lacks {', '.join(missing)}"
    )
    problems = []
    for iface in NFS[nf]:
        st = rep["interfaces"].get(iface)
        if not isinstance(st, dict):
            problems.append(f"{iface}: missing")
            continue
        for d, word in (("inbound", "in"), ("outbound", "out")):
            seen = len(nfv.seen_by_nf(f"{nf}:{iface} {d}"))
            said = st.get(f"{word}_packets")
            record.value(f"{iface} {word}_packets (report / capture)", f"{said} / {seen}")
            tol = _tolerance(seen)
            if not isinstance(said, int) or abs(said - seen) > tol:
                problems.append(
                    f"{iface} {word}_packets: expected {seen} ± {tol} (captured), observed {said}"
                )
    assert not problems, f"{nf}.report disagrees with the captures: " + "; ".join(problems)
