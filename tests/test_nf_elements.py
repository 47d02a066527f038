"""Unit tests of the NF toolkit's elements on crafted packets (scapy builds
and checks them; no sockets: FromDevice.inject and ToDevice.sent_frames).

NAPT, IPRewriter and HTTPInspector are lab 1's graded logic: they live in the
lab's solution (labs/01-nfv/solution), not in the kit, and are loaded from there."""

from __future__ import annotations

import importlib.util

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from nslab.errors import NslabError
from nslab.labs import labs_root
from nslab.nf import (
    ARPQuerier,
    ARPResponder,
    Classifier,
    Counter,
    Discard,
    FromDevice,
    ICMPPingResponder,
    IPClassifier,
    Router,
    Search,
    Tee,
    ToDevice,
    parse,
)
from nslab.nf.filter import FilterError, compile_filter
from nslab.nf.packet import Packet, inet_checksum, set_ip, set_port, verify_checksums


def _solution(nf: str):
    """A module of lab 1's solution (grader-only code: not part of the kit)."""
    path = labs_root() / "01-nfv" / "solution" / f"{nf}.py"
    spec = importlib.util.spec_from_file_location(f"lab1_solution_{nf}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NAPT = _solution("napt").NAPT
IPRewriter = _solution("lb1").IPRewriter
HTTPInspector = _solution("ids").HTTPInspector

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def eth(p) -> Ether:
    return Ether(src=MAC_A, dst=MAC_B) / p


def pkt(p) -> Packet:
    return Packet(bytes(eth(p)), "t0")


def rebuilt_ok(frame: bytes) -> bool:
    """scapy recomputes checksums when fields are deleted: compare."""
    e = Ether(frame)
    ip = e[IP]
    want = IP(bytes(ip))
    del want.chksum
    l4 = want.payload
    if hasattr(l4, "chksum"):
        del l4.chksum
    return bytes(IP(bytes(want))) == bytes(ip)


class Sink:
    """Collects what an element outputs, per output port."""

    def __init__(self, elem, n: int | None = None):
        self.got: dict[int, list[Packet]] = {}
        for i in range(n if n is not None else elem.nout):
            elem.out[i] = lambda p, i=i: self.got.setdefault(i, []).append(p)

    def n(self, port: int) -> int:
        return len(self.got.get(port, []))


# -- parsing and checksums ---------------------------------------------------
@pytest.mark.parametrize(
    "opts",
    [
        [],
        [("Timestamp", (1, 2))],
        [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (5, 0)), ("WScale", 7)],
    ],
)
@pytest.mark.parametrize("ip_opts", [False, True])
def test_payload_offsets_follow_ihl_and_data_offset(opts, ip_opts):
    ip = IP(src="10.0.0.50", dst="100.0.0.45")
    if ip_opts:
        ip.options = [b"\x94\x04\x00\x00"]  # router alert: IHL 6
    p = pkt(ip / TCP(sport=1234, dport=80, options=opts) / Raw(b"PUT /x HTTP/1.1\r\n"))
    assert p.payload() == b"PUT /x HTTP/1.1\r\n"


def test_ethernet_padding_is_not_payload():
    p = pkt(IP(src="1.1.1.1", dst="2.2.2.2") / TCP(flags="A"))
    p.data += b"\x00" * 6  # Ethernet pads short frames to 60 bytes
    assert p.payload() == b""


def test_incremental_checksums_match_full_recompute():
    for l4 in (
        TCP(sport=1, dport=80, flags="S", options=[("Timestamp", (1, 2))]) / Raw(b"x" * 33),
        UDP(sport=5, dport=53) / Raw(b"abc"),
        ICMP(id=7, seq=1) / Raw(b"ping"),
    ):
        p = pkt(IP(src="10.0.0.50", dst="100.0.0.45") / l4)
        set_ip(p, "src", bytes([100, 0, 0, 1]))
        set_ip(p, "dst", bytes([100, 0, 0, 41]))
        set_port(p, "id" if ICMP in l4 else "src", 40000)
        assert verify_checksums(p.data), l4.summary()
        assert rebuilt_ok(bytes(p.data))
    assert inet_checksum(b"\x45\x00\x00\x1c") == (~(0x4500 + 0x001C)) & 0xFFFF


# -- filter language ---------------------------------------------------------
@pytest.mark.parametrize(
    "expr,frame,want",
    [
        ("arp", ARP(), True),
        ("arp request", ARP(op=1), True),
        ("arp reply", ARP(op=1), False),
        ("icmp", IP() / ICMP(), True),
        ("icmp type echo", IP() / ICMP(type=0), False),
        ("icmp type echo-reply", IP() / ICMP(type=0), True),
        ("tcp dst port 80", IP() / TCP(dport=80), True),
        ("tcp dst port 80", IP() / TCP(sport=80, dport=9), False),
        ("udp port 53", IP() / UDP(sport=53), True),
        (
            "src net 10.0.0.0/24 and not dst host 10.0.0.1",
            IP(src="10.0.0.5", dst="1.2.3.4") / TCP(),
            True,
        ),
        ("dst host 10.0.0.1 or arp", IP(src="10.0.0.5", dst="10.0.0.1") / TCP(), True),
        ("tcp and not payload", IP() / TCP(flags="S"), True),
        ("tcp and not payload", IP() / TCP(flags="PA") / Raw(b"x"), False),
        ("tcp syn", IP() / TCP(flags="S"), True),
        ("(tcp or udp) and port 7", IP() / UDP(dport=7), True),
        ("-", ARP(), True),
        ("ip", ARP(), False),
    ],
)
def test_filter_language(expr, frame, want):
    assert compile_filter(expr)(pkt(frame)) is want


@pytest.mark.parametrize(
    "bad", ["", "tcp dst port", "tcp port 99999", "bogus", "src host 1.2.3", "(tcp"]
)
def test_filter_errors_are_clear(bad):
    with pytest.raises(FilterError, match="filter"):
        compile_filter(bad)


# -- elements ------------------------------------------------------------------
def test_classifiers_route_and_count_unmatched():
    c = IPClassifier("arp", "tcp dst port 80")
    s = Sink(c)
    c.push(pkt(ARP()))
    c.push(pkt(IP() / TCP(dport=80)))
    c.push(pkt(IP() / UDP()))
    assert (s.n(0), s.n(1), c.dropped) == (1, 1, 1)
    k = Classifier("12/0806", "12/0800 23/11", "-")
    s = Sink(k)
    for f in (ARP(), IP() / UDP(), IP() / TCP()):
        k.push(pkt(f))
    assert (s.n(0), s.n(1), s.n(2)) == (1, 1, 1)
    with pytest.raises(NslabError, match="OFFSET/HEX"):
        Classifier("12:0806")


def test_arp_responder_and_proxy_exceptions():
    r = ARPResponder(
        "100.0.0.45 02:00:00:00:00:45", "10.9.0.0/16 02:00:00:00:00:99", **{"except": "10.9.0.7"}
    )
    s = Sink(r)
    r.push(pkt(ARP(op=1, hwsrc=MAC_A, psrc="100.0.0.1", pdst="100.0.0.45")))
    r.push(pkt(ARP(op=1, hwsrc=MAC_A, psrc="100.0.0.1", pdst="10.9.3.3")))
    r.push(pkt(ARP(op=1, hwsrc=MAC_A, psrc="100.0.0.1", pdst="10.9.0.7")))
    assert (s.n(0), s.n(1)) == (2, 1)
    rep = Ether(bytes(s.got[0][0].data))
    assert (
        rep[ARP].op == 2 and rep[ARP].hwsrc == "02:00:00:00:00:45" and rep[ARP].psrc == "100.0.0.45"
    )
    assert rep.dst == MAC_A and rep[ARP].pdst == "100.0.0.1"


def test_arp_querier_queues_until_reply():
    q = ARPQuerier("100.0.0.1", "02:00:00:00:01:01")
    s = Sink(q)
    q.push(pkt(IP(src="100.0.0.1", dst="100.0.0.45") / ICMP()))
    assert s.n(0) == 1 and Ether(bytes(s.got[0][0].data))[ARP].pdst == "100.0.0.45"
    q.push(pkt(ARP(op=2, hwsrc="02:00:00:00:00:45", psrc="100.0.0.45", pdst="100.0.0.1")), 1)
    assert s.n(0) == 2
    sent = Ether(bytes(s.got[0][1].data))
    assert sent.dst == "02:00:00:00:00:45" and sent.src == "02:00:00:00:01:01" and ICMP in sent


def test_ping_responder_builds_valid_reply():
    r = ICMPPingResponder("02:00:00:00:00:45")
    s = Sink(r)
    r.push(pkt(IP(src="100.0.0.1", dst="100.0.0.45") / ICMP(id=9, seq=3) / Raw(b"abcdef")))
    rep = Ether(bytes(s.got[0][0].data))
    assert rep[ICMP].type == 0 and rep[IP].src == "100.0.0.45" and rep[IP].dst == "100.0.0.1"
    assert rep[ICMP].id == 9 and rep.src == "02:00:00:00:00:45" and rep.dst == MAC_A
    assert verify_checksums(bytes(rep))


def test_napt_translates_both_ways_and_expires():
    n = NAPT("100.0.0.1", icmp_timeout="0.05")
    s = Sink(n)
    n.push(pkt(IP(src="10.0.0.50", dst="100.0.0.45") / TCP(sport=5555, dport=80, flags="S")), 0)
    out = Ether(bytes(s.got[0][0].data))
    assert out[IP].src == "100.0.0.1" and out[TCP].sport != 5555 and rebuilt_ok(bytes(out))
    pub = out[TCP].sport
    # the same flow keeps its port; another host gets another one
    n.push(pkt(IP(src="10.0.0.50", dst="100.0.0.45") / TCP(sport=5555, dport=80, flags="A")), 0)
    n.push(pkt(IP(src="10.0.0.51", dst="100.0.0.45") / TCP(sport=5555, dport=80, flags="S")), 0)
    ports = [Ether(bytes(p.data))[TCP].sport for p in s.got[0]]
    assert ports[0] == ports[1] != ports[2]
    n.push(pkt(IP(src="100.0.0.45", dst="100.0.0.1") / TCP(sport=80, dport=pub, flags="SA")), 1)
    back = Ether(bytes(s.got[1][0].data))
    assert back[IP].dst == "10.0.0.50" and back[TCP].dport == 5555 and rebuilt_ok(bytes(back))
    # unknown inbound -> output 2
    n.push(pkt(IP(src="100.0.0.45", dst="100.0.0.1") / TCP(sport=80, dport=1, flags="SA")), 1)
    assert s.n(2) == 1
    # ICMP echo: identifier rewritten and restored; the mapping times out
    n.push(pkt(IP(src="10.0.0.50", dst="100.0.0.45") / ICMP(id=77, seq=1)), 0)
    ident = Ether(bytes(s.got[0][-1].data))[ICMP].id
    n.push(pkt(IP(src="100.0.0.45", dst="100.0.0.1") / ICMP(type=0, id=ident, seq=1)), 1)
    assert Ether(bytes(s.got[1][-1].data))[ICMP].id == 77
    import time

    time.sleep(0.1)
    n.tick(time.monotonic())
    n.push(pkt(IP(src="100.0.0.45", dst="100.0.0.1") / ICMP(type=0, id=ident, seq=2)), 1)
    assert s.n(2) == 2


def test_iprewriter_round_robin_per_connection():
    rw = IPRewriter("100.0.0.40", "100.0.0.41", "100.0.0.42", vip="100.0.0.45")
    s = Sink(rw)
    seen = []
    for sport in range(1000, 1006):
        rw.push(
            pkt(IP(src="100.0.0.1", dst="100.0.0.45") / TCP(sport=sport, dport=80, flags="S")), 0
        )
        rw.push(
            pkt(IP(src="100.0.0.1", dst="100.0.0.45") / TCP(sport=sport, dport=80, flags="A")), 0
        )
        a, b = (Ether(bytes(p.data))[IP].dst for p in s.got[0][-2:])
        assert a == b  # both packets of a connection go to the same backend
        seen.append(a)
    assert seen == ["100.0.0.40", "100.0.0.41", "100.0.0.42"] * 2
    rw.push(pkt(IP(src="100.0.0.41", dst="100.0.0.1") / TCP(sport=80, dport=1001, flags="SA")), 1)
    rep = Ether(bytes(s.got[1][0].data))
    assert rep[IP].src == "100.0.0.45" and rebuilt_ok(bytes(rep))
    # a mid-connection packet of an unknown flow, and a reply from the wrong backend, are dropped
    rw.push(pkt(IP(src="100.0.0.1", dst="100.0.0.45") / TCP(sport=9, dport=80, flags="A")), 0)
    rw.push(pkt(IP(src="100.0.0.42", dst="100.0.0.1") / TCP(sport=80, dport=1001, flags="A")), 1)
    assert rw.dropped == 2


def test_search_uses_parsed_payload():
    s_el = Search("cat /etc/passwd", "insert")
    s = Sink(s_el)
    for ts in (False, True):
        opts = [("Timestamp", (1, 2))] if ts else []
        s_el.push(pkt(IP() / TCP(options=opts) / Raw(b"xx CAT /ETC/PASSWD yy")))
        s_el.push(pkt(IP() / TCP(options=opts) / Raw(b"harmless")))
    assert (s.n(0), s.n(1)) == (2, 2)


def test_tee_copies():
    t = Tee("3")
    s = Sink(t)
    p = pkt(IP() / UDP())
    t.push(p)
    assert s.n(0) == s.n(1) == s.n(2) == 1 and s.got[1][0].data is not p.data


# -- HTTP inspection -------------------------------------------------------------
def segs(payload: bytes, cuts: list[int], seq0: int = 1000, ts: bool = False):
    """TCP segments of one client->server stream, cut at the given offsets."""
    opts = [("Timestamp", (123, 456))] if ts else []
    bounds = [0, *cuts, len(payload)]
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        out.append(
            pkt(
                IP(src="100.0.0.1", dst="100.0.0.45")
                / TCP(sport=4321, dport=80, seq=seq0 + a, flags="PA", options=opts)
                / Raw(payload[a:b])
            )
        )
    return out


def put(body: bytes, method: bytes = b"PUT") -> bytes:
    return (
        method + b" /v1/data HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


@pytest.mark.parametrize("ts", [False, True])
@pytest.mark.parametrize(
    "payload,cuts,want",
    [
        (put(b"hello world"), [], "pass"),
        (put(b"please InSeRt into t"), [], "divert"),
        (put(b"xx cat /etc/passwd"), [60], "divert"),  # headers and body apart
        (
            put(b"0123456789 cat /var/log/syslog"),
            [66, 70],
            "divert",
        ),  # pattern split across segments
        (put(b"x" * 50 + b"dElEtE"), [55, 60, 90], "divert"),
        (put(b"benign update-free text"[:9]), [10], "pass"),
        (put(b"abc", b"POST"), [], "pass"),
        (put(b"DELETE me", b"POST"), [], "pass"),  # POST bodies are not inspected
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", [], "block"),
        (b"PU", [], "hold"),  # could still become PUT: wait
        (b"GE", [], "block"),  # can no longer become POST or PUT
        (b"DELETE /x HTTP/1.1\r\n\r\n", [3], "block"),
    ],
)
def test_http_inspector_decisions(payload, cuts, want, ts):
    h = HTTPInspector("cat /etc/passwd", "cat /var/log/", "INSERT", "UPDATE", "DELETE")
    s = Sink(h)
    ss = segs(payload, cuts, ts=ts)
    for p in ss:
        h.push(p)
    got = {0: s.n(0), 1: s.n(1)}
    if want == "pass":
        assert got == {0: len(ss), 1: 0}
    elif want == "divert":
        assert got == {0: 0, 1: len(ss)}
    elif want == "block":
        assert got == {0: 0, 1: 0} and h.blocked_packets == len(ss)
    else:
        assert got == {0: 0, 1: 0} and h.blocked_packets == 0


def test_http_inspector_handles_out_of_order_retransmission_and_keepalive():
    h = HTTPInspector("INSERT")
    s = Sink(h)
    a = put(b"one insert two")
    ss = segs(a, [20, 62])
    h.push(ss[0])
    h.push(ss[2])  # out of order: held
    h.push(ss[0])  # duplicate of a held segment: dropped
    assert s.n(0) == s.n(1) == 0
    h.push(ss[1])
    assert s.n(1) == 3 and s.n(0) == 0
    h.push(ss[2])  # retransmission after the decision follows it
    assert s.n(1) == 4
    b = put(b"fine")  # next request on the same connection
    for p in segs(b, [], seq0=1000 + len(a)):
        h.push(p)
    assert s.n(0) == 1
    assert h.requests == {"PUT diverted": 1, "PUT passed": 1}


def test_http_inspector_decides_incomplete_put_after_hold():
    import time

    h = HTTPInspector("UPDATE", hold="0.05")
    s = Sink(h)
    body = b"update x"
    req = b"PUT / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + body  # never completes
    h.push(segs(req, [])[0])
    assert s.n(1) == 0
    time.sleep(0.1)
    h.tick(time.monotonic())
    assert s.n(1) == 1


# -- composition, configuration and the report ---------------------------------
def test_python_composition_and_report(tmp_path):
    r = Router("t", report=tmp_path / "t.report")
    src = r.add(FromDevice("t0"), "src")
    c = r.add(IPClassifier("icmp", "-"), "c")
    out = r.add(ToDevice("t1"), "out")
    out.sent_frames = []
    src >> c
    c[0] >> r.add(Counter("icmp"), "n_icmp") >> out
    c[1] >> r.add(Discard("not_icmp"), "d")
    for _ in range(3):
        src.inject(bytes(eth(IP() / ICMP())))
    src.inject(bytes(eth(IP() / UDP())))
    r.flush()
    rep = r.report()
    assert len(out.sent_frames) == 3
    assert rep["interfaces"]["t0"]["in_packets"] == 4
    assert rep["interfaces"]["t1"]["out_packets"] == 3
    assert rep["classes"]["icmp"]["packets"] == 3
    assert rep["drops"] == {"not_icmp": 1} and rep["total_drops"] == 1


CONFIG = """
// a two-class forwarder
src :: FromDevice($in);
c :: IPClassifier(arp, tcp dst port 80, -)
src -> Counter(all) -> c
c[0] -> out :: ToDevice($out);
c[1] -> Counter(web)
     -> out;
c[2] -> Discard(other)   # everything else
"""


def test_config_language_builds_the_same_graph():
    r = parse(CONFIG, {"in": "t0", "out": "t1"}, name="cfg")
    r["out"].sent_frames = []
    for f in (ARP(), IP() / TCP(dport=80), IP() / UDP()):
        r["src"].inject(bytes(eth(f)))
    r.flush()
    rep = r.report()
    assert len(r["out"].sent_frames) == 2
    assert rep["classes"]["all"]["packets"] == 3 and rep["classes"]["web"]["packets"] == 1
    assert rep["drops"] == {"other": 1}


@pytest.mark.parametrize(
    "text,msg",
    [
        ("a :: FromDevice($in)", r"<config>:1: \$in is not set"),
        ("x :: Nope()", "unknown element class 'Nope'"),
        ("a :: Counter\na ->\n  Counter\nb :: Nope", "<config>:4: unknown element class"),
        ("a :: Counter\nb :: Counter\na[3] -> b", "<config>:3: .*outputs 0..0"),
        ("a :: Counter; a :: Counter", "declared twice"),
        ("c :: IPClassifier(tcp dst port x)", "not a number"),
    ],
)
def test_config_errors_name_the_line(text, msg):
    with pytest.raises(NslabError, match=msg):
        parse(text)


@pytest.mark.parametrize(
    "body,want", [(b"5\r\nhello\r\n0\r\n\r\n", 0), (b"6\r\nINSERT\r\n3\r\n ok\r\n0\r\n\r\n", 1)]
)
def test_http_inspector_chunked_put_waits_for_the_last_chunk(body, want):
    h = HTTPInspector("INSERT")
    s = Sink(h)
    req = b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    ss = segs(req, [len(req) - 5])
    h.push(ss[0])
    assert s.n(0) == s.n(1) == 0  # the last chunk has not arrived: held
    h.push(ss[1])
    assert s.n(want) == 2 and s.n(1 - want) == 0


def test_report_refuses_non_regular_paths(tmp_path):
    """An atomic rename onto a device or fifo would replace it (never again /dev/null)."""
    import os

    from nslab.nf.report import write

    fifo = tmp_path / "nf.report"
    os.mkfifo(fifo)
    with pytest.raises(NslabError, match="not a regular file"):
        write({"nf": "x"}, fifo)
    assert fifo.is_fifo()
    r = Router("x", report=fifo)
    with pytest.raises(NslabError, match="not a regular file"):
        r.run(duration=0, install_signals=False)
    assert fifo.is_fifo()
    ok = write({"nf": "x", "interfaces": {}}, tmp_path / "ok.report")
    assert ok.read_text().startswith("{") and (tmp_path / "ok.report.txt").exists()
