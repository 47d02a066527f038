"""Lab 1's solution NFs (napt, ids, lb1) on a hand-built mini version of the
course topology, observed from packet captures:

  h1 10.0.0.50 -- napt -- ids -- lb1 -- sw3 (Linux bridge) -- llm1/llm2/llm3
                            \\-- insp 100.0.0.30

Like the lab's topology, napt's interfaces carry the kernel addresses
10.0.0.1 and 100.0.0.1 (the NF's kernel guard must keep the kernel out).
Traffic runs twice, with TCP timestamps off and on in h1, so TCP header
lengths differ; injection PUTs vary case, position and segment boundaries.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path

import pytest

from nslab.nf.netns import NetnsSet
from nslab.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, raw sockets)"),
]

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "labs/01-nfv/solution"
VIP = "100.0.0.45"
BACKENDS = {"100.0.0.40": "llm1", "100.0.0.41": "llm2", "100.0.0.42": "llm3"}
PINGS = 3
POSTS = 6
CONNECTIONS = 2 * (POSTS + 5 + 2 + 2)  # per phase: POSTs, injection PUTs, GETs, benign PUTs

# Runs in h1: request groups as JSON; each request is sent in the given chunks
# (one send() each, 40 ms apart, TCP_NODELAY: separate segments).
CLIENT = r"""
import json, socket, sys, threading, time
def one(req):
    res = {"tag": req["tag"], "ok": False}
    s = socket.socket(); s.settimeout(req["timeout"])
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s.connect((req["host"], 80))
        for i, c in enumerate(req["chunks"]):
            if i: time.sleep(0.04)
            s.sendall(c.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            b = s.recv(4096)
            if not b: break
            data += b
        head, _, body = data.partition(b"\r\n\r\n")
        n = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
        while n and len(body) < n[0]:
            b = s.recv(4096)
            if not b: break
            body += b
        res["status"] = int(head.split()[1]) if head else None
        res["backend"] = json.loads(body)["backend"] if body else None
        res["ok"] = res["status"] == 200
    except Exception as e:
        res["error"] = type(e).__name__
    finally:
        s.close()
    return res
out = []
for group in json.loads(sys.argv[1]):
    if group["parallel"]:
        rs = [None] * len(group["reqs"])
        def run(i, r): rs[i] = one(r)
        ts = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(group["reqs"])]
        [t.start() for t in ts]; [t.join() for t in ts]
        out += rs
    else:
        out += [one(r) for r in group["reqs"]]
print(json.dumps(out))
"""


def request(
    tag: str, method: str, body: str, cuts: list[int] | None = None, timeout: float = 3.0
) -> dict:
    raw = f"{method} /v1/completions HTTP/1.1\r\nHost: {VIP}\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    bounds = [0, *(cuts or []), len(raw)]
    chunks = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return {"tag": tag, "host": VIP, "chunks": chunks, "timeout": timeout}


def phase_requests(ts: int) -> list[dict]:
    """POSTs (round robin), GETs (blocked), injection PUTs (diverted), benign PUTs."""
    posts = [request(f"post{ts}-{i}", "POST", f'{{"prompt": "hello {i}"}}') for i in range(POSTS)]
    head = len(f"PUT /v1/completions HTTP/1.1\r\nHost: {VIP}\r\nContent-Length: 99\r\n\r\n")
    inj = [
        request(f"inj{ts}-0", "PUT", f"marker inj{ts}-0 cat /etc/passwd"),
        request(f"inj{ts}-1", "PUT", f"Cat /Var/Log/syslog marker inj{ts}-1", cuts=[head - 5]),
        # the pattern itself split across two segments
        request(
            f"inj{ts}-2", "PUT", f"marker inj{ts}-2 ; INSERT INTO t VALUES (1)", cuts=[head + 22]
        ),
        request(
            f"inj{ts}-3",
            "PUT",
            f"x' ; uPdAtE users SET a=1 -- marker inj{ts}-3",
            cuts=[head, head + 8],
        ),
        request(
            f"inj{ts}-4",
            "PUT",
            f"{'a' * 300} delete marker inj{ts}-4",
            cuts=[head + 100, head + 301],
        ),
    ]
    gets = [request(f"get{ts}-{i}", "GET", "") for i in range(2)]
    benign = [
        request(f"ok{ts}-0", "PUT", f"marker ok{ts}-0 a harmless document"),
        request(f"ok{ts}-1", "PUT", f"marker ok{ts}-1 {'b' * 200}", cuts=[head + 30]),
    ]
    for r in inj + gets:
        r["timeout"] = 1.5  # expected to fail: keep the wait short
    return [
        {"parallel": False, "reqs": posts},
        {"parallel": True, "reqs": inj + gets},
        {"parallel": False, "reqs": benign},
    ]


class Capture:
    """tcpdump on one interface of a namespace, into a pcap."""

    def __init__(self, net: NetnsSet, ns: str, iface: str, path: Path):
        self.net, self.path = net, path
        # --immediate-mode: without it libpcap hands frames over in ring blocks
        # and the last block is lost when tcpdump is stopped
        self.p = net.popen(
            ns, ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", "0", "-w", str(path)]
        )
        ready, _, _ = select.select([self.p.stderr], [], [], 10)
        assert ready, f"tcpdump on {ns}:{iface} did not start"
        self.p.stderr.readline()  # "listening on ..."

    def packets(self) -> list:
        import scapy.layers.inet  # noqa: F401 - registers Ether/IP/TCP for rdpcap
        import scapy.layers.l2  # noqa: F401
        from scapy.utils import rdpcap

        self.net.stop(self.p)
        return list(rdpcap(str(self.path))) if self.path.stat().st_size > 24 else []


def ping(net: NetnsSet, ns: str, dst: str, count: int) -> int:
    r = net.exec(
        ns, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", dst], check=False, timeout=20
    )
    for word in r.stdout.split(","):
        if "received" in word:
            return int(word.split()[0])
    return 0


def wait_ready(p, name: str, timeout: float = 20) -> None:
    """Wait for the NF's `<nf>: forwarding on ...` line."""
    buf = bytearray()

    def forwarding() -> bool:
        if select.select([p.stdout], [], [], 0.1)[0]:
            buf.extend(os.read(p.stdout.fileno(), 4096))
        if b"forwarding on" not in buf and p.poll() is not None:
            raise AssertionError(f"{name} exited: {p.stderr.read1(4096)!r}")
        return b"forwarding on" in buf

    # a timeout raises WaitTimeout (stderr is not read: a live NF would block the read)
    wait_until(forwarding, timeout, interval=0, what=f"{name} to print 'forwarding on'")


def mini_topology(n: NetnsSet, nf_dir: Path, tmp: Path) -> tuple[dict[str, str], dict]:
    """The namespaces, links, backends and the three NFs from nf_dir, running."""
    ns = {t: n.ns(t) for t in ("h1", "napt", "ids", "lb1", "insp", "sw3", *BACKENDS.values())}
    n.veth(ns["h1"], "eth0", ns["napt"], "eth0")
    n.veth(ns["napt"], "eth1", ns["ids"], "eth0")
    n.veth(ns["ids"], "eth1", ns["lb1"], "eth0")
    n.veth(ns["ids"], "eth2", ns["insp"], "eth0")
    n.veth(ns["lb1"], "eth1", ns["sw3"], "p0")
    for i, (ip, name) in enumerate(BACKENDS.items(), start=1):
        n.veth(ns[name], "eth0", ns["sw3"], f"p{i}")
        n.addr(ns[name], "eth0", f"{ip}/24", gateway="100.0.0.1")
    n.bridge(ns["sw3"], "br0", ["p0", "p1", "p2", "p3"])
    n.addr(ns["h1"], "eth0", "10.0.0.50/24", gateway="10.0.0.1")
    n.addr(ns["napt"], "eth0", "10.0.0.1/24")  # as in topologies/nfv.yaml
    n.addr(ns["napt"], "eth1", "100.0.0.1/24")
    n.addr(ns["insp"], "eth0", "100.0.0.30/24", gateway="100.0.0.1")
    for name in BACKENDS.values():
        n.popen(ns[name], [sys.executable, "-m", "nslab.nf.backend", "--name", name], cwd=ROOT)
    args = {"napt": ["eth0", "eth1"], "ids": ["eth0", "eth1", "eth2"], "lb1": ["eth0", "eth1"]}
    nfs = {}
    for nf, ifs in args.items():
        cmd = [
            sys.executable,
            str(nf_dir / f"{nf}.py"),
            *ifs,
            "--report",
            str(tmp / f"{nf}.report"),
        ]
        nfs[nf] = n.popen(ns[nf], cmd, cwd=ROOT)
    for nf, p in nfs.items():
        wait_ready(p, nf)
    return ns, nfs


@pytest.fixture(scope="module")
def lab1(tmp_path_factory):
    """Build the topology, run the solution NFs and all traffic; return what was observed."""
    tmp = tmp_path_factory.mktemp("lab1")
    obs: dict = {"phases": {}}
    with NetnsSet("tnf") as n:
        ns, nfs = mini_topology(n, SOLUTION, tmp)
        h1, ids, insp, sw3 = ns["h1"], ns["ids"], ns["insp"], ns["sw3"]
        attempts = []
        wait_until(
            lambda: attempts.append(1) or ping(n, h1, VIP, 1) == 1, 20, what=f"h1 to ping {VIP}"
        )
        obs["warmup_pings"] = len(attempts)
        caps = {
            "napt_side": Capture(n, ids, "eth0", tmp / "napt_side.pcap"),
            "to_lb1": Capture(n, ids, "eth1", tmp / "to_lb1.pcap"),
            "insp": Capture(n, insp, "eth0", tmp / "insp.pcap"),
            **{
                name: Capture(n, sw3, f"p{i}", tmp / f"{name}.pcap")
                for i, name in enumerate(BACKENDS.values(), start=1)
            },
        }
        for ts in (0, 1):
            n.exec(h1, ["sysctl", "-qw", f"net.ipv4.tcp_timestamps={ts}"])
            got = {"pings": ping(n, h1, VIP, PINGS), "ping_backend": ping(n, h1, "100.0.0.40", 1)}
            groups = phase_requests(ts)
            r = n.exec(h1, [sys.executable, "-c", CLIENT, json.dumps(groups)], timeout=60)
            got["results"] = {x["tag"]: x for x in json.loads(r.stdout)}
            obs["phases"][ts] = got
        time.sleep(0.3)  # let the last frames reach the captures
        obs["pcaps"] = {k: c.packets() for k, c in caps.items()}
        obs["nf_exit"] = {}
        for name, p in nfs.items():
            out, err = n.stop(p)
            obs["nf_exit"][name] = (p.returncode, err)
            obs[f"{name}_report"] = json.loads((tmp / f"{name}.report").read_text())
        obs["guard_left"] = n.exec(ns["napt"], ["nft", "list", "tables"], check=False).stdout
    return obs


def tcp_payloads(pkts) -> list[bytes]:
    from scapy.layers.inet import TCP

    return [bytes(p[TCP].payload) for p in pkts if TCP in p and len(p[TCP].payload)]


def test_pings_to_the_vip_are_answered_and_other_hosts_blocked(lab1):
    for ts, ph in lab1["phases"].items():
        assert ph["pings"] == PINGS, (
            f"timestamps={ts}: {ph['pings']}/{PINGS} pings to the VIP answered"
        )
        assert ph["ping_backend"] == 0, "a ping to a backend behind lb1 got through"


def test_http_round_robin_seen_at_sw3(lab1):
    from scapy.layers.inet import IP, TCP

    syns = []
    for name in BACKENDS.values():
        for p in lab1["pcaps"][name]:
            if TCP in p and p[TCP].flags == "S" and p[TCP].dport == 80:
                syns.append((float(p.time), p[TCP].sport, p[IP].dst, name))
    first = {}
    for t, sport, dst, name in sorted(syns):
        first.setdefault(sport, (t, dst, name))
    order = [v[2] for v in sorted(first.values())]
    # every connection's SYN went to exactly the backend whose port we saw it on
    assert all(BACKENDS[dst] == name for _, dst, name in first.values())
    # every connection's handshake reaches a backend (the IDS passes TCP signalling;
    # it stops payloads): POSTs, injection PUTs, GETs and benign PUTs of both phases
    expected = CONNECTIONS
    assert len(order) == expected, f"expected {expected} connections at sw3, saw {order}"
    names = list(BACKENDS.values())
    for a, b in zip(order, order[1:], strict=False):
        assert names.index(b) == (names.index(a) + 1) % 3, f"not round robin: {order}"
    # and the clients were answered by the backend the capture says
    answered = [
        lab1["phases"][ts]["results"][f"post{ts}-{i}"] for ts in (0, 1) for i in range(POSTS)
    ]
    assert all(r["ok"] for r in answered), answered
    assert [r["backend"] for r in answered[:POSTS]] == order[:POSTS]


def test_napt_address_on_the_service_side(lab1):
    from scapy.layers.inet import IP, TCP

    ips = [p[IP] for p in lab1["pcaps"]["napt_side"] if IP in p]
    assert ips, "nothing captured between napt and ids"
    assert not [p for p in ips if p.src.startswith("10.0.0.") or p.dst.startswith("10.0.0.")]
    to_vip = [p for p in ips if p.dst == VIP]
    assert to_vip and all(p.src == "100.0.0.1" for p in to_vip)
    # replies come back from the VIP (lb1 rewrote the backends' addresses)
    replies = [p for p in ips if TCP in p and p[TCP].sport == 80]
    assert replies and all(p.src == VIP for p in replies)


def test_tcp_header_lengths_varied(lab1):
    from scapy.layers.inet import TCP

    syns = [p for p in lab1["pcaps"]["napt_side"] if TCP in p and p[TCP].flags == "S"]
    with_ts = [p for p in syns if any(o[0] == "Timestamp" for o in p[TCP].options)]
    assert syns and 0 < len(with_ts) < len(syns)


def test_ids_blocks_get(lab1):
    for ts in (0, 1):
        for i in range(2):
            r = lab1["phases"][ts]["results"][f"get{ts}-{i}"]
            assert not r["ok"], r
    for where in ("to_lb1", *BACKENDS.values()):
        assert not [p for p in tcp_payloads(lab1["pcaps"][where]) if p.startswith(b"GET")], where


def test_ids_diverts_injection_puts_to_insp(lab1):
    at_insp = b"".join(tcp_payloads(lab1["pcaps"]["insp"]))
    at_lb1 = b"".join(tcp_payloads(lab1["pcaps"]["to_lb1"]))
    for ts in (0, 1):
        for i in range(5):
            tag = f"inj{ts}-{i}"
            assert not lab1["phases"][ts]["results"][tag]["ok"]
            assert f"marker {tag}".encode() in at_insp, f"{tag} did not reach insp"
            assert f"marker {tag}".encode() not in at_lb1, f"{tag} reached lb1"
    for pattern in (b"cat /etc/passwd", b"insert", b"update", b"delete", b"cat /var/log/"):
        assert pattern not in at_lb1.lower()


def test_ids_passes_benign_puts(lab1):
    at_lb1 = b"".join(tcp_payloads(lab1["pcaps"]["to_lb1"]))
    for ts in (0, 1):
        for i in range(2):
            tag = f"ok{ts}-{i}"
            r = lab1["phases"][ts]["results"][tag]
            assert r["ok"] and r["backend"] in BACKENDS.values(), r
            assert f"marker {tag}".encode() in at_lb1


def test_reports_count_what_was_sent(lab1):
    for name, (rc, err) in lab1["nf_exit"].items():
        assert rc == 0, f"{name} exited {rc}: {err}"
    lb1, ids, napt = lab1["lb1_report"], lab1["ids_report"], lab1["napt_report"]
    # warm-up pings before everything was ready may or may not have arrived
    lo, hi = 2 * PINGS + 1, 2 * PINGS + lab1["warmup_pings"]
    pings = lb1["classes"]["front.ping_vip"]["packets"]
    assert lo <= pings <= hi
    conns = sum(v["connections"] for k, v in lb1["classes"].items() if ".backend." in k)
    assert conns == CONNECTIONS
    assert ids["requests"] == {
        "POST passed": 2 * POSTS,
        "PUT passed": 4,
        "PUT diverted": 10,
        "GET blocked": 4,
    }
    # pings to llm1 reach napt but never leave it: lb1 answers no ARP for llm1 on that side
    assert ids["classes"]["in.icmp"]["packets"] == pings
    assert napt["classes"]["inside.icmp_echo"]["packets"] == pings + 2
    for rep in (lb1, ids, napt):
        assert set(rep) >= {"interfaces", "classes", "drops", "total_drops", "duration_s"}
    assert "nslab_napt" not in lab1["guard_left"], "the kernel guard was not removed"


STARTER = ROOT / "labs/01-nfv/starter"


def test_starter_nfs_only_forward(tmp_path):
    """The starter runs, reports, and fails the lab's behaviour: no VIP, no round robin."""
    with NetnsSet("tnf") as n:
        ns, nfs = mini_topology(n, STARTER, tmp_path)
        assert ping(n, ns["h1"], VIP, 2) == 0
        r = n.exec(
            ns["h1"],
            ["curl", "-s", "-m", "2", "-X", "POST", "-d", "x", f"http://{VIP}/"],
            check=False,
            timeout=10,
        )
        assert r.returncode != 0
        for nf, p in nfs.items():
            n.stop(p)
            assert p.returncode == 0, nf
            rep = json.loads((tmp_path / f"{nf}.report").read_text())
            assert sum(v["packets"] for v in rep["classes"].values()) > 0, nf
