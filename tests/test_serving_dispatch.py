"""Dispatch policies (pure), Maglev table properties, and the dispatcher process
over real pods on loopback, including a pod dying mid-run. Load-aware
policies are lab 4's answer, not the kit's: they are tested here from the
lab's reference solution (a grader-side file)."""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from nslab.errors import NslabError
from nslab.labs import labs_root
from nslab.serving import load, local, metrics
from nslab.serving.dispatcher import load_policy, parse_pods
from nslab.serving.plugins import class_from_file
from nslab.serving.policies import (
    POLICIES,
    ConsistentHash,
    DispatchRequest,
    PodView,
    Random,
    RoundRobin,
    maglev_table,
)
from nslab.serving.testing import model_repo  # noqa: F401  (fixture)

LAB4_SOLUTION = labs_root() / "04-load-balancing" / "solution" / "policies.py"


def reference(name: str):
    """Lab 4's reference policy `name` (PowerOfTwo, JoinShortestQueue)."""
    return class_from_file(f"{LAB4_SOLUTION}:{name}", "policy", "", "tsrv_ref_")


def views(n: int) -> list[PodView]:
    return [PodView(f"p{i}", f"http://127.0.0.1:{9000 + i}") for i in range(n)]


REQ = DispatchRequest("digits", "", {})


def test_round_robin_cycles_and_random_spreads():
    pods = views(3)
    rr = RoundRobin()
    seq = [rr.choose(REQ, pods).name for _ in range(9)]
    assert collections.Counter(seq) == {"p0": 3, "p1": 3, "p2": 3}
    assert all(seq[i] == seq[i + 3] for i in range(6))  # a fixed cycle
    rnd = Random(seed=1)
    counts = collections.Counter(rnd.choose(REQ, pods).name for _ in range(3000))
    assert all(900 < c < 1100 for c in counts.values()), counts


def test_the_kit_ships_no_load_aware_policy():
    # Lab 4's answer (power of two choices, join the shortest queue) is not in the kit.
    assert set(POLICIES) == {"round-robin", "random", "maglev"}
    import nslab.serving.policies as kit

    assert not hasattr(kit, "PowerOfTwo") and not hasattr(kit, "JoinShortestQueue")


def test_reference_jsq_follows_the_queue_estimate():
    pods = views(4)
    for p, q in zip(pods, [5, 6, 0, 2], strict=True):
        p.reported_queue = q
    jsq = reference("JoinShortestQueue")()
    assert jsq.choose(REQ, pods).name == "p2"
    pods[2].sent_since_report = 7  # sent since the scrape: no longer the shortest
    assert jsq.choose(REQ, pods).name == "p3"


def test_reference_power_of_two_never_picks_the_busiest_of_many():
    pods = views(5)
    for i, p in enumerate(pods):
        p.outstanding = i * 10  # p4 is the most loaded
    p2c = reference("PowerOfTwo")()
    picks = collections.Counter(p2c.choose(REQ, pods).name for _ in range(2000))
    assert "p4" not in picks  # it always loses its pairing
    assert picks["p0"] > picks["p3"]  # the idlest wins most (it wins every pairing it is in)
    assert p2c.choose(REQ, pods[:1]).name == "p0"


def test_maglev_table_is_balanced_and_disrupts_little():
    names = [f"pod{i}" for i in range(7)]
    m = 4099
    t = maglev_table(names, m)
    counts = collections.Counter(t)
    assert len(t) == m and set(counts) == set(range(7))
    assert max(counts.values()) - min(counts.values()) <= 2  # Maglev: near-perfect balance
    t2 = maglev_table([n for n in names if n != "pod3"], m)
    survivors = [n for n in names if n != "pod3"]
    moved = sum(
        1 for a, b in zip(t, t2, strict=True) if names[a] != "pod3" and names[a] != survivors[b]
    )
    assert moved / m < 0.05, f"{moved} of {m} slots of surviving pods moved"
    assert maglev_table(names, m) == t  # deterministic


def test_consistent_hash_is_sticky_and_moves_only_lost_keys():
    pods = views(5)
    ch = ConsistentHash()
    keys = [f"user{i}" for i in range(500)]
    first = {k: ch.choose(DispatchRequest("m", k, {}), pods).name for k in keys}
    assert len(set(first.values())) == 5
    again = {k: ch.choose(DispatchRequest("m", k, {}), pods).name for k in keys}
    assert first == again
    rest = [p for p in pods if p.name != "p2"]
    after = {k: ch.choose(DispatchRequest("m", k, {}), rest).name for k in keys}
    moved = [k for k in keys if first[k] != "p2" and after[k] != first[k]]
    assert len(moved) <= 0.05 * len(keys), f"{len(moved)} keys moved that did not have to"


def test_policy_loading_errors(tmp_path):
    with pytest.raises(NslabError, match="round-robin"):
        load_policy("fastest")
    f = tmp_path / "tsrv_pol.py"
    f.write_text(
        "from nslab.serving.policies import Policy\nclass Mine(Policy):\n"
        "    def choose(self, r, pods):\n        return pods[-1]\n"
    )
    assert load_policy(f"{f}:Mine").choose(REQ, views(3)).name == "p2"
    with pytest.raises(NslabError, match="no class 'Other'"):
        load_policy(f"{f}:Other")
    assert parse_pods("a=http://h:1,b=http://h:2") == [("a", "http://h:1"), ("b", "http://h:2")]
    from nslab.serving.dispatcher import command

    cmd = command({"kind": "dispatcher", "pods": "a=http://h:1", "policy": "random", "port": 80})
    assert cmd[1:3] == ["-m", "nslab.serving.dispatcher"] and json.loads(cmd[-1])["port"] == 80
    with pytest.raises(NslabError, match="unknown key.*polcy"):
        command({"pods": "a=http://h:1", "polcy": "random"})


FAST = {"model": "digits", "device": "sim-gpu", "profile": "a=4,c=0,sat=1"}


@pytest.fixture(scope="module")
def three_pods(model_repo):  # noqa: F811
    with local.pods(*[dict(FAST, name=f"tsrv-p{i}") for i in range(3)]) as ps:
        yield [(f"tsrv-p{i}", p.url) for i, p in enumerate(ps)], ps


@pytest.mark.parametrize("policy", ["round-robin", "random", "PowerOfTwo"])
def test_dispatcher_spreads_load(three_pods, policy):
    pods, _ = three_pods
    if policy[0].isupper():  # lab 4's reference, loaded in the dispatcher's process
        policy = f"{LAB4_SOLUTION}:{policy}"
    d = local.start_dispatcher(pods, policy)
    try:
        r = load.run(
            d.url,
            "digits",
            rate=150,
            warmup_s=0.2,
            window_s=1.0,
            stable_windows=0,
            max_windows=1,
            verify=True,
        )
    finally:
        d.stop()
    assert r.ok > 100 and r.errors == 0 and r.mismatches == 0, r.line()
    assert set(r.per_pod) == {n for n, _ in pods}, r.per_pod  # nobody starved
    if policy == "round-robin":
        assert max(r.per_pod.values()) - min(r.per_pod.values()) <= 3


def test_consistent_hashing_routes_a_key_to_one_pod(three_pods):
    pods, _ = three_pods
    d = local.start_dispatcher(pods, "maglev")
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    ).encode()
    try:
        seen = collections.defaultdict(set)
        for i in range(40):
            key = f"session{i % 4}"
            req = urllib.request.Request(
                d.url + "/v2/models/digits/infer", body, {"X-Nslab-Key": key}, method="POST"
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                seen[key].add(json.loads(resp.read())["parameters"]["pod"])
    finally:
        d.stop()
    assert all(len(v) == 1 for v in seen.values()), seen


def test_dispatcher_survives_a_pod_dying(model_repo):  # noqa: F811
    with local.pods(*[dict(FAST, name=f"tsrv-k{i}") for i in range(3)]) as ps:
        pods = [(f"tsrv-k{i}", p.url) for i, p in enumerate(ps)]
        d = local.start_dispatcher(pods, "round-robin")
        try:
            killer = threading.Timer(1.0, ps[1].stop, kwargs={"sig_kill": True})
            killer.start()
            t0 = time.monotonic()
            r = load.run(
                d.url,
                "digits",
                rate=100,
                warmup_s=0.3,
                window_s=1.0,
                stable_windows=0,
                max_windows=2,
                timeout_s=5,
            )
            killer.join()
            assert time.monotonic() - t0 < 60  # bounded, even on a loaded machine
            with urllib.request.urlopen(d.url + "/metrics", timeout=5) as resp:
                m = metrics.parse(resp.read().decode())
        finally:
            d.stop()
    # Retried, not failed: at most a stray timeout when the machine is overloaded.
    assert r.errors <= 0.02 * r.sent, f"requests failed instead of being retried: {r.line()}"
    assert r.ok > 50, r.line()
    assert metrics.value(m, "nslab_dispatch_pod_failures_total", pod="tsrv-k1") >= 1
    assert metrics.value(m, "nslab_dispatch_pod_healthy", pod="tsrv-k1") == 0
    assert r.per_pod.get("tsrv-k0", 0) > r.per_pod.get("tsrv-k1", 0)  # k1 served only ~1 s


def test_a_failing_policy_gets_a_clear_500(three_pods, tmp_path):
    pods, _ = three_pods
    f = tmp_path / "tsrv_bad.py"
    f.write_text(
        "from nslab.serving.policies import Policy\n"
        "class Bad(Policy):\n"
        "    def choose(self, r, pods):\n"
        "        return pods[7]\n"
    )
    d = local.start_dispatcher(pods, f"{f}:Bad")
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    ).encode()
    try:
        req = urllib.request.Request(d.url + "/v2/models/digits/infer", body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 500
        assert "Bad.choose raised IndexError" in json.loads(e.value.read())["error"]
        assert "IndexError" in d.log_tail()  # the traceback, for the student
    finally:
        d.stop()
