"""Lab 1's traffic, sent once per lab variant, and what the grader saw of it.

The `nfv` fixture drives the running lab (the student's napt, ids and lb1
under the sandbox, the lab's backends llm1-3) with the grader's own
traffic from h1 and h2, captures it on every hop, then stops the NFs with
SIGTERM so that they write their reports. Checks only look at the result:
captures, the grader's client results, and the reports. Nothing a student
process prints counts.

Variant parameters (lab.yaml `params`): ts_h1/ts_h2 (TCP timestamps in h1/h2,
so TCP header lengths vary), posts (how many sequential POSTs), style
(plain: patterns as listed, one segment; varied: mixed case, any position,
patterns split across segments, long bodies, more methods).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nslab.measure import capture as start_capture

VIP = "100.0.0.45"
NAPT_OUT = "100.0.0.1"
HOSTS = {"h1": "10.0.0.50", "h2": "10.0.0.51"}
BACKENDS = {"100.0.0.40": "llm1", "100.0.0.41": "llm2", "100.0.0.42": "llm3"}
BACKEND_PORT = {"llm1": "sw3:eth2", "llm2": "sw3:eth3", "llm3": "sw3:eth4"}
PATTERNS = ["cat /etc/passwd", "cat /var/log/", "INSERT", "UPDATE", "DELETE"]
NFS = {"napt": ["eth0", "eth1"], "ids": ["eth0", "eth1", "eth2"], "lb1": ["eth0", "eth1"]}
PINGS = 3
# Answers take ~10-50 ms through the three NFs on an idle machine, but a
# 2-core box that grades beside other jobs can stall Python NFs for seconds.
OK_TIMEOUT = 5.0  # connect + answer of a request that should succeed
FAIL_TIMEOUT = 2.0  # a connection or answer that should not come: wait this long
TAG = re.compile(rb"tag=([a-z0-9]+)")


# -- the traffic ---------------------------------------------------------------
def http(tag: str, method: str, body: str, cuts: list[int] | None = None, ok: bool = True) -> dict:
    """One request to the VIP; `cuts` are offsets into the body where the
    request is split into separate segments (offset 0: headers alone)."""
    head = (
        f"{method} /v1/completions?tag={tag} HTTP/1.1\r\nHost: {VIP}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    raw = head + body
    bounds = [0, *(len(head) + c for c in (cuts or [])), len(raw)]
    chunks = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return {
        "tag": tag,
        "host": VIP,
        "port": 80,
        "method": method,
        "chunks": chunks,
        "timeout": OK_TIMEOUT,  # the handshake must pass the IDS in any case
        "answer_timeout": OK_TIMEOUT if ok else FAIL_TIMEOUT,
        "pause": 0.05,
    }


def connect(tag: str, host: str, port: int) -> dict:
    return {"tag": tag, "host": host, "port": port, "chunks": [], "timeout": FAIL_TIMEOUT}


def _injections(style: str) -> list[dict]:
    """One PUT per pattern. plain: as listed, at the end, one segment.
    varied: other case, start/middle/end, split inside the pattern."""
    if style == "plain":
        return [
            http(f"inj{i}", "PUT", f"please run this: {p}", ok=False)
            for i, p in enumerate(PATTERNS)
        ]
    filler = "lorem ipsum dolor sit amet " * 80  # ~2 kB: more than one segment
    reqs = []
    # (pattern as sent, body before it, body after it, cut offsets relative to the pattern)
    forms = [
        ("CAT /Etc/Passwd", "", " ; ls", [5]),  # at the start, split inside
        ("Cat /VAR/log/", "tail -f ", "syslog", [-4, 2]),  # headers+body split, then inside
        ("insert", filler, " into t values (1)", [3]),  # after 2 kB, split inside
        ("uPdAtE", "x'; ", " users set admin=1 --", []),  # in the middle, one segment
        ("Delete", "id=7; ", "", [len("Delete") - 1]),  # at the end, last byte alone
    ]
    for i, (pat, before, after, rel) in enumerate(forms):
        body = before + pat + after
        cuts = sorted({max(0, len(before) + r) for r in rel})
        reqs.append(http(f"inj{i}", "PUT", body, cuts=cuts, ok=False))
    return reqs


def traffic_plan(params: dict[str, Any]) -> dict[str, list[dict]]:
    """Request groups per host. POSTs first and one at a time (round robin),
    then the requests that must fail in parallel, then benign PUTs."""
    style, posts = params.get("style", "plain"), int(params.get("posts", 6))
    inj = _injections(style)
    if style == "plain":
        blocked = ["GET", "GET", "DELETE"]
        benign = [
            http("ok0", "PUT", "a harmless document"),
            http("ok1", "PUT", "another harmless document"),
        ]
    else:
        blocked = ["GET", "HEAD", "PATCH", "DELETE", "OPTIONS"]
        big = "harmless words only " * 150  # 3 kB: several segments
        benign = [
            http("ok0", "PUT", "Harmless Document With Capitals", cuts=[0]),
            http("ok1", "PUT", big, cuts=[700, 1900]),
            http("ok2", "PUT", "harmless"),
        ]
    bad = [http(f"bad{i}", m, "x=1" if m != "GET" else "", ok=False) for i, m in enumerate(blocked)]
    probes = [
        connect("direct0", "100.0.0.40", 80),  # a backend, past the load balancer
        connect("port0", VIP, 8080),  # the VIP on another port
        connect("port1", VIP, 22),
    ]

    def posts_of(prefix: str, n: int) -> list[dict]:
        return [http(f"{prefix}{i}", "POST", f'{{"prompt": "hello {i}"}}') for i in range(n)]

    odd = lambda xs: xs[1::2]  # noqa: E731
    even = lambda xs: xs[0::2]  # noqa: E731
    return {
        "h1": [
            {"parallel": False, "reqs": posts_of("pa", posts), "give_up": 2},
            {"parallel": True, "reqs": even(inj) + even(bad) + probes[:2]},
            {"parallel": False, "reqs": even(benign), "give_up": 1},
        ],
        "h2": [
            {"parallel": False, "reqs": posts_of("pb", 2), "give_up": 2},
            {"parallel": True, "reqs": odd(inj) + odd(bad) + probes[2:]},
            {"parallel": False, "reqs": odd(benign), "give_up": 1},
        ],
    }


# -- observations -------------------------------------------------------------
@dataclass
class Flow:
    """Client-to-server payload of one TCP connection at one capture point."""

    src: str
    sport: int
    dst: str
    dport: int
    segments: dict[int, bytes] = field(default_factory=dict)

    @property
    def payload(self) -> bytes:
        return b"".join(self.segments[s] for s in sorted(self.segments))

    @property
    def tag(self) -> str | None:
        m = TAG.search(self.payload)
        return m.group(1).decode() if m else None


def flows_to(pkts: list, dport: int = 80) -> list[Flow]:
    """Payload-carrying flows towards `dport`, retransmissions merged."""
    from scapy.layers.inet import IP, TCP

    flows: dict[tuple, Flow] = {}
    for p in pkts:
        if IP in p and TCP in p and p[TCP].dport == dport and len(p[TCP].payload):
            key = (p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport)
            f = flows.setdefault(key, Flow(*key))
            f.segments[p[TCP].seq] = bytes(p[TCP].payload)
    return list(flows.values())


def syns(pkts: list) -> list:
    """First SYN of each connection (retransmissions dropped), in capture order."""
    from scapy.layers.inet import IP, TCP

    seen, out = set(), []
    for p in pkts:
        if IP in p and TCP in p and p[TCP].flags == "S":
            key = (p[IP].src, p[TCP].sport, p[TCP].seq)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


@dataclass
class Observed:
    params: dict[str, Any]
    plan: dict[str, list[dict]]
    results: dict[str, dict[str, dict]]  # host -> tag -> client result
    pings: dict[str, int]  # "h1->VIP" -> replies
    warmup_pings: int
    pcaps: dict[str, list]  # capture point -> scapy packets
    reports: dict[str, dict | None]
    report_errors: dict[str, str]
    nf_exit: dict[str, int | None]
    # wall-clock time of the SIGTERM: what a capture saw after it, the NF
    # (which stops reading then) cannot have counted
    stopped_at: float = 0.0

    def seen_by_nf(self, point: str) -> list:
        return [p for p in self.pcaps[point] if float(p.time) <= self.stopped_at]

    def requests(self, host: str) -> dict[str, dict]:
        return {r["tag"]: r for g in self.plan[host] for r in g["reqs"]}

    def all_requests(self) -> list[tuple[str, dict, dict]]:
        """(host, request, result) of every request sent."""
        return [
            (h, req, self.results[h].get(tag, {}))
            for h in self.plan
            for tag, req in self.requests(h).items()
        ]

    def of_kind(self, prefix: str) -> list[tuple[str, dict, dict]]:
        return [x for x in self.all_requests() if x[1]["tag"].startswith(prefix)]


def _config(request: pytest.FixtureRequest) -> dict:
    path = request.config.getoption("--nslab-config") or os.environ.get("NSLAB_GRADE_CONFIG")
    return json.loads(Path(path).read_text())


def _ping(lab, host: str, dst: str, count: int) -> int:
    r = lab.exec(host, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", dst], timeout=20)
    m = re.search(r"(\d+) (?:packets )?received", r.stdout)
    return int(m.group(1)) if m else 0


def _drain(lab, nf: str, timeout: float) -> None:
    """Wait (bounded) until the NF's packet sockets have nothing queued:
    /proc/net/packet in its namespace lists each socket's Rmem and owner."""
    try:
        uid = os.stat(lab.submission).st_uid  # the sandboxed student user
    except OSError:
        return
    end, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < end and quiet < 2:
        r = lab.exec(nf, ["cat", "/proc/net/packet"], timeout=10)
        queued = 0
        for line in r.stdout.splitlines()[1:]:
            f = line.split()
            if len(f) >= 8 and f[7] == str(uid):
                queued += int(f[6])
        quiet = quiet + 1 if queued == 0 else 0
        time.sleep(0.1)


def _wait_fabric(lab, timeout: float) -> bool:
    end = time.monotonic() + timeout
    pairs = [("h1", "10.0.0.51"), ("llm1", "100.0.0.41")]
    while pairs and time.monotonic() < end:
        pairs = [(a, b) for a, b in pairs if _ping(lab, a, b, 1) != 1]
    return not pairs


def _client(lab, host: str, groups: list[dict]) -> dict[str, dict]:
    script = Path(__file__).with_name("nfv_client.py")
    r = lab.exec(host, [sys.executable, str(script), json.dumps(groups)], timeout=90)
    if r.returncode != 0:
        raise RuntimeError(
            f"the grader's client in {host} exited with {r.returncode} "
            f"(a negative status is a signal: something outside the lab killed it): {r.stderr[-500:]}"
        )
    return {x["tag"]: x for x in json.loads(r.stdout)}


def _stop_nfs(lab) -> tuple[dict[str, int | None], float]:
    """SIGTERM (never SIGKILL: an NF writes its report on the way out) to all
    NFs at once, so that the captures end at about the moment the NFs do."""
    procs = {nf: lab.procs.get(nf) for nf in NFS}
    stopped_at = time.time()
    for p in procs.values():
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    codes: dict[str, int | None] = {}
    end = time.monotonic() + 10
    for nf, p in procs.items():
        try:
            codes[nf] = None if p is None else p.wait(timeout=max(end - time.monotonic(), 0.1))
        except Exception:  # noqa: BLE001 - still running: the lab's teardown kills it
            codes[nf] = None
    # An NF in a container runs under nsenter, which exits at once on SIGTERM:
    # wait (bounded) until the NF itself, in the same process group, is gone
    # too, so that its report is complete before it is read.
    for p in procs.values():
        while p is not None and time.monotonic() < end:
            try:
                os.killpg(p.pid, 0)
            except OSError:
                break
            time.sleep(0.05)
    return codes, stopped_at


@pytest.fixture(scope="session")
def nfv(lab, request) -> Observed:
    params = dict(lab.params)
    plan = traffic_plan(params)
    art = Path(_config(request)["artifacts"]) / (lab.variant.name if lab.variant else "default")
    art.mkdir(parents=True, exist_ok=True)
    for nf in NFS:  # a report handed in with the submission must not count
        for suffix in (".report", ".report.txt"):
            (lab.submission / f"{nf}{suffix}").unlink(missing_ok=True)
    for host, key in (("h1", "ts_h1"), ("h2", "ts_h2")):
        ts = int(params.get(key, 1))
        lab.exec(host, ["sysctl", "-qw", f"net.ipv4.tcp_timestamps={ts}"], timeout=10)

    points = {
        "service side": ("napt:eth1", "", 256),
        "h1": ("h1:eth0", "", 256),
        "h2": ("h2:eth0", "", 256),
        "to lb1": ("lb1:eth0", "", 2048),
        "to insp": ("insp:eth0", "", 2048),
        "sw3 from lb1": ("sw3:eth1", "", 256),
        **{f"sw3 to {b}": (port, "", 256) for b, port in BACKEND_PORT.items()},
        # what each NF received and sent, to compare with its report
        **{
            f"{nf}:{i} {d}": (f"{nf}:{i}", d, 96)
            for nf, ifs in NFS.items()
            for i in ifs
            for d in ("inbound", "outbound")
        },
    }
    caps = {}
    try:
        for name, (where, bpf, snap) in points.items():
            path = art / (re.sub(r"[^a-z0-9]+", "_", name) + ".pcap")
            caps[name] = start_capture(
                lab.engine, where, bpf, path=path, max_packets=20000, snaplen=snap
            ).start()
        # The switches must forward before the NFs can be judged: on a loaded
        # machine the controller can lag for seconds after the lab is up. Wait
        # (bounded) for pings across sw1 (h1-h2) and sw3 (llm1-llm2), which
        # involve no student code.
        if not _wait_fabric(lab, 40.0):
            raise RuntimeError(
                "the lab's switches did not forward h1<->h2 and llm1<->llm2 pings within 40 s: "
                "the grading machine is overloaded or broken, not the submission; grade it again"
            )
        # warm-up: ARP along the chain (bounded; a student NF may never answer)
        warm = 0
        while warm < 3:
            warm += 1
            if _ping(lab, "h1", VIP, 1) == 1:
                break
        with ThreadPoolExecutor(max_workers=3) as ex:
            futs = {
                "h1->VIP": ex.submit(_ping, lab, "h1", VIP, PINGS),
                "h2->VIP": ex.submit(_ping, lab, "h2", VIP, PINGS),
                "h1->llm2": ex.submit(_ping, lab, "h1", "100.0.0.41", 2),
            }
            pings = {k: f.result() for k, f in futs.items()}
        with ThreadPoolExecutor(max_workers=2) as ex:
            futs = {h: ex.submit(_client, lab, h, groups) for h, groups in plan.items()}
            results = {h: f.result() for h, f in futs.items()}
        # let each NF read what is queued on its sockets before it stops, so that
        # its report covers what the captures saw
        for nf in NFS:
            _drain(lab, nf, 10.0)
        nf_exit, stopped_at = _stop_nfs(lab)
    finally:
        for c in caps.values():
            c.stop()
    pcaps = {name: c.packets for name, c in caps.items()}
    reports: dict[str, dict | None] = {}
    errors: dict[str, str] = {}
    for nf in NFS:
        text = lab.read_output(f"{nf}.report")
        if text is None:
            reports[nf], errors[nf] = None, f"no {nf}.report in the NF's working directory"
            continue
        try:
            reports[nf] = json.loads(text)
        except ValueError as exc:
            reports[nf], errors[nf] = None, f"{nf}.report is not JSON: {exc}"
    return Observed(params, plan, results, pings, warm, pcaps, reports, errors, nf_exit, stopped_at)
