"""Part 1: xdp_filter, rules in a map, counters in maps.

The grader fills `rules` with a rule set drawn from a secret seed, runs the
program with BPF_PROG_TEST_RUN on its own frames (VLAN tags, IPv4 options,
fragments, truncated frames), compares each verdict and the output bytes
with its reference model, then reads `stats` and the rules' `hits`. Last,
it attaches the program to b1's interface and sends real traffic from b2."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
import reference as ref
from conftest import offloads_off

from nslab.errors import NslabError
from nslab.xdp import bpf, loader

KINDS = ["tcp/udp", "vlan", "ip options", "fragments", "icmp/arp", "truncated"]
NAMES = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}


def _maps(o: loader.BpfObject):
    try:
        rules, stats = o.map("rules"), o.map("stats")
    except NslabError as exc:
        pytest.fail(f"xdp_filter.c: {exc}")
    if (rules.info.key_size, rules.info.value_size) != (4, 16):
        pytest.fail(
            f"map rules: key/value are {rules.info.key_size}/{rules.info.value_size} bytes, "
            "the lab's layout is 4/16 (struct rule_key, struct rule_val): keep the starter's structs"
        )
    if stats.info.value_size != 8 or stats.info.max_entries < 3:
        pytest.fail("map stats: must be an array of at least 3 __u64 counters (keep the starter's)")
    return rules, stats


@pytest.fixture(scope="session")
def filter_run(obj, rng, style):
    """Every frame once through the student's program; results by kind."""
    o = obj("filter")
    rules_map, stats = _maps(o)
    for k in rules_map.keys():
        rules_map.delete(k)
    rules = ref.make_rules(rng)
    for (proto, port), act in rules.items():
        rules_map.set(ref.rule_key(proto, port), ref.rule_val(act))
    cases = ref.filter_cases(rng, rules, 6 if style == "plain" else 14)
    rng.shuffle(cases)
    results: dict[str, list[str]] = {k: [] for k in KINDS}
    expect_stats = [0, 0, 0]
    expect_hits: dict[tuple, int] = {}
    before = [stats.u64_sum(struct.pack("=I", i)) for i in range(3)]
    for c in cases:
        verdict, slot, key = ref.filter_expect(c.frame, rules)
        expect_stats[slot] += 1
        if key is not None:
            expect_hits[key] = expect_hits.get(key, 0) + 1
        r = o.run(c.frame)
        if r.verdict != verdict:
            results[c.kind].append(
                f"{c.why}: expected {NAMES[verdict]}, observed {NAMES.get(r.verdict, r.verdict)}"
            )
        elif r.data != c.frame:
            results[c.kind].append(f"{c.why}: the filter changed the frame")
    got = [stats.u64_sum(struct.pack("=I", i)) - before[i] for i in range(3)]
    hits = {}
    for proto, port in rules:
        v = rules_map.get(ref.rule_key(proto, port))
        hits[(proto, port)] = struct.unpack_from("=Q", v, 8)[0] if v else -1
    return {
        "results": results,
        "n": len(cases),
        "stats": (expect_stats, got),
        "hits": (expect_hits, hits),
        "rules": rules,
    }


@pytest.mark.points(1)
def test_filter_loads(obj):
    """xdp_filter.c compiles and the verifier accepts it"""
    o = obj("filter")
    o.prog("xdp_filter")
    _maps(o)


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", KINDS)
def test_filter_verdicts(filter_run, kind, record):
    """verdicts and bytes of xdp_filter on crafted frames"""
    bad = filter_run["results"][kind]
    record.value(f"{kind} frames wrong", len(bad))
    assert not bad, f"{len(bad)} {kind} frame(s) wrong, e.g.:\n  " + "\n  ".join(bad[:4])


@pytest.mark.points(2)
def test_filter_counters(filter_run):
    """stats (passed, dropped, malformed) and each rule's hits count what happened"""
    exp, got = filter_run["stats"]
    names = ["passed", "dropped", "malformed"]
    wrong = [
        f"stats[{i}] ({names[i]}): expected {exp[i]}, observed {got[i]}"
        for i in range(3)
        if exp[i] != got[i]
    ]
    ehits, hits = filter_run["hits"]
    for key, h in hits.items():
        if ehits.get(key, 0) != h:
            wrong.append(
                f"hits of rule proto {key[0]} port {key[1]}: expected {ehits.get(key, 0)}, observed {h}"
            )
    assert not wrong, "\n".join(wrong[:6])


RECV = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); t.bind(("0.0.0.0", int(sys.argv[2])))
s.settimeout(0.05); t.settimeout(0.05); got = [0, 0]; print("ready", flush=True)
end = time.time() + float(sys.argv[3])
while time.time() < end:
    for i, so in enumerate((s, t)):
        try:
            so.recv(2048); got[i] += 1
        except OSError:
            pass
print(got[0], got[1], flush=True)
"""

SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[4])):
    for p in (int(sys.argv[2]), int(sys.argv[3])):
        s.sendto(b"nslab lab 6 %d" % i, (sys.argv[1], p))
    time.sleep(0.002)
"""


@pytest.mark.points(2)
def test_filter_on_the_wire(lab, obj, filter_run, rng):
    """attached to b1 (generic XDP): the dropped port gets nothing, the other everything"""
    o = obj("filter")
    rules = filter_run["rules"]
    blocked = next(p for (pr, p), a in rules.items() if pr == 17 and p and a == bpf.XDP_DROP)
    # a port the rules let through: the explicit UDP allow rule (the UDP wildcard may drop)
    allowed = next(p for (pr, p), a in rules.items() if pr == 17 and p and a == bpf.XDP_PASS)
    offloads_off(lab, "b1")
    offloads_off(lab, "b2")
    pin = o.pin("xdp_filter")
    r = lab.exec("b1", loader.attach_argv("eth0", pin, "generic"))
    assert r.returncode == 0, f"grader could not attach the program: {r.stderr.strip()}"
    try:
        recv = lab.popen(
            "b1",
            [sys.executable, "-c", RECV, str(allowed), str(blocked), "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert recv.stdout.readline().strip() == "ready"
        n = 40
        lab.exec(
            "b2", [sys.executable, "-c", SEND, lab.ip("b1"), str(allowed), str(blocked), str(n)]
        )
        out, _ = recv.communicate(timeout=10)
        got_allowed, got_blocked = (int(x) for x in out.split())
        ping = lab.exec("b2", ["ping", "-c", "2", "-i", "0.2", "-W", "1", lab.ip("b1")])
    finally:
        lab.exec("b1", loader.detach_argv("eth0", "generic"))
    assert got_blocked == 0, (
        f"UDP port {blocked} (a drop rule): expected 0 datagrams, observed {got_blocked}"
    )
    assert got_allowed >= n - 2, (
        f"UDP port {allowed} (no rule): expected {n} datagrams, observed {got_allowed}"
    )
    icmp_dropped = rules.get((1, 0)) == bpf.XDP_DROP
    assert (ping.returncode != 0) == icmp_dropped, (
        f"ping b2 -> b1 {'answered' if ping.returncode == 0 else 'failed'}, but the ICMP rule says "
        f"{'drop' if icmp_dropped else 'pass'}"
    )
