"""Checks of lab 4 (load balancing heterogeneous inference pods).

Fleet: two fast pods (20 ms per request) and two slow ones (40 ms), each
unbatched with a queue of 64: capacity 50 + 50 + 25 + 25 = 150 req/s.
At 80 % load (120 req/s) round-robin sends 30 req/s to each slow pod, more
than it can serve, so its queue and the tail explode; a load-aware policy
keeps every pod below capacity. Round-robin and the student's policies are
measured against the same fleet in the same run."""

from __future__ import annotations

import threading

import pytest

from nslab.serving import labcheck, load

FAST = {"model": "digits", "device": "sim-gpu", "profile": "a=20,c=0,sat=1", "queue_limit": 64}
SLOW = dict(FAST, profile="a=40,c=0,sat=1")
FLEET = [
    dict(FAST, name="fast1"),
    dict(FAST, name="fast2"),
    dict(SLOW, name="slow1"),
    dict(SLOW, name="slow2"),
]
CAPACITY = 150.0
RATE = 0.8 * CAPACITY
SLO_MS = 500.0
MEASURE = {"warmup_s": 1.0, "window_s": 2.0, "stable_windows": 0, "max_windows": 3}


@pytest.fixture(scope="module")
def repo():
    with labcheck.readable_repo() as path:
        yield path


@pytest.fixture(scope="module")
def fleet(repo):
    procs = labcheck.grader_pods(repo, *FLEET)
    try:
        yield [(c["name"], p.url) for c, p in zip(FLEET, procs, strict=True)]
    finally:
        for p in procs:
            p.stop(sig_kill=True)


def measure(lab, repo, fleet, policy: str) -> load.LoadResult:
    from nslab.serving import local

    # An earlier overloaded run leaves a backlog in the pods: let it drain first.
    assert local.wait_idle([u for _, u in fleet], 30), "grader problem: the pods stayed busy"
    if policy == "round-robin":
        d = local.start_dispatcher(fleet, "round-robin")
    else:
        d = labcheck.student_dispatcher(
            lab, repo, fleet, f"policies.py:{policy}", f"the dispatcher with your {policy}"
        )
    try:
        r = load.run(
            d.url,
            "digits",
            rate=RATE,
            slo_ms=SLO_MS,
            verify=True,
            repo=repo,
            seed=5,
            timeout_s=10,
            **MEASURE,
        )
        r.dispatcher_log = d.log_tail(12) if r.errors else ""  # type: ignore[attr-defined]
        return r
    finally:
        d.stop(sig_kill=True)


@pytest.fixture(scope="module")
def runs(lab, repo, fleet):
    """The student's two policies, then round-robin, on the same fleet."""
    out: dict = {}
    for policy in ("PowerOfTwo", "JoinShortestQueue"):
        try:
            out[policy] = measure(lab, repo, fleet, policy)
        except Exception as exc:  # reported by the checks that need it
            out[policy] = exc
    out["round-robin"] = measure(lab, repo, fleet, "round-robin")
    return out


def result(runs, policy: str) -> load.LoadResult:
    r = runs[policy]
    if isinstance(r, Exception):
        raise AssertionError(f"your {policy} could not be measured: {r}")
    return r


def _observe(record, name: str, r: load.LoadResult) -> None:
    record.value(f"{name} p99", round(r.latency["p99_ms"], 1), "ms")
    record.value(f"{name} throughput", round(r.throughput, 1), "req/s")
    record.value(f"{name} rejected", r.rejected)
    record.value(f"{name} requests per pod", str(dict(sorted(r.per_pod.items()))))
    record.value(f"{name} answers by status", str(r.status_codes))


@pytest.mark.points(1)
def test_policies_answer(lab, runs, record, expect):
    """requests through your policies are answered correctly"""
    for policy in ("PowerOfTwo", "JoinShortestQueue"):
        r = result(runs, policy)
        if getattr(r, "dispatcher_log", ""):
            record.note(f"{policy}: the dispatcher's last output:\n{r.dispatcher_log}")
        expect(r.ok, ">", 0, f"{policy}: successful inferences")
        expect(r.mismatches + r.errors, "==", 0, f"{policy}: failed or wrong answers")


def _tail_checks(runs, policy, record, expect) -> None:
    rr, r = result(runs, "round-robin"), result(runs, policy)
    _observe(record, "round-robin", rr)
    _observe(record, policy, r)
    record.cdf(f"{policy} latency at 80% load", r.latencies_ms)
    record.cdf("round-robin latency at 80% load", rr.latencies_ms)
    expect(r.rejected, "==", 0, f"{policy}: requests rejected by a full pod queue")
    expect(round(r.latency["p99_ms"], 1), "<=", SLO_MS, f"{policy}: p99 at 80% load", "ms")
    expect(
        round(r.latency["p99_ms"], 1),
        "<=",
        round(rr.latency["p99_ms"] / 2, 1),
        f"{policy}: p99 vs half of round-robin's p99",
        "ms",
    )
    assert r.achieved_rate >= 0.9 * RATE, (
        f"grader problem: offered only {r.achieved_rate:.0f} of {RATE:g} req/s; grade again"
    )


@pytest.mark.points(4)
def test_power_of_two_tail(lab, runs, record, expect):
    """power of two choices: p99 within the SLO and at most half of round-robin's"""
    _tail_checks(runs, "PowerOfTwo", record, expect)


@pytest.mark.points(4)
def test_jsq_tail(lab, runs, record, expect):
    """join-shortest-queue: p99 within the SLO and at most half of round-robin's"""
    _tail_checks(runs, "JoinShortestQueue", record, expect)


@pytest.mark.points(2)
def test_no_pod_starved_or_overloaded(lab, runs, record, expect):
    """no pod starved, none pushed past its queue limit"""
    for policy in ("PowerOfTwo", "JoinShortestQueue"):
        r = result(runs, policy)
        total = sum(r.per_pod.values()) or 1
        for c in FLEET:
            share = r.per_pod.get(c["name"], 0) / total
            record.value(f"{policy} share of {c['name']}", round(share, 3))
            expect(
                round(share, 3), ">=", 0.05, f"{policy}: share of requests served by {c['name']}"
            )
        expect(r.rejected, "==", 0, f"{policy}: requests rejected by a pod's full queue")


PROBE = r"""
import json, collections
from nslab.serving.policies import PodView, DispatchRequest
import policies
pods = [PodView(f"p{i}", f"http://127.0.0.1:{9000 + i}") for i in range(5)]
for i, p in enumerate(pods):
    p.outstanding = 10 * i
req = DispatchRequest("digits", "", {})
pol = policies.PowerOfTwo()
c = collections.Counter(pol.choose(req, pods).name for _ in range(4000))
jsq = policies.JoinShortestQueue()
for p, q in zip(pods, [7, 3, 9, 0, 5]):
    p.reported_queue = q
print(json.dumps({"p2c": dict(c), "jsq": jsq.choose(req, pods).name,
                  "jsq_metrics": bool(getattr(jsq, "needs_metrics", False))}))
"""


@pytest.mark.points(2)
def test_policies_do_what_they_say(lab, repo, record, expect):
    """PowerOfTwo compares two random pods; JoinShortestQueue follows the pods' queues"""
    got = labcheck.student_python(lab, repo, PROBE)
    c = got["p2c"]
    n = sum(c.values())
    # Loads 0,10,20,30,40: p0 wins each of the 4 of 10 pairs it is in (40 %);
    # p4 never wins; a full scan would always pick p0.
    record.value("PowerOfTwo picks", str(c))
    expect(c.get("p4", 0), "==", 0, "PowerOfTwo: picks of the busiest pod")
    expect(round(c.get("p0", 0) / n, 2), "<=", 0.5, "PowerOfTwo: share of the idlest pod")
    expect(round(c.get("p0", 0) / n, 2), ">=", 0.3, "PowerOfTwo: share of the idlest pod")
    expect(got["jsq"], "==", "p3", "JoinShortestQueue: pod chosen (queues 7,3,9,0,5)")
    expect(got["jsq_metrics"], "==", True, "JoinShortestQueue.needs_metrics")


@pytest.mark.points(2)
def test_survives_a_pod_failure(lab, repo, record, expect):
    """the dispatcher with your PowerOfTwo survives a pod dying mid-run"""
    procs = labcheck.grader_pods(repo, *[dict(FAST, name=f"k{i}") for i in range(3)])
    pods = [(f"k{i}", p.url) for i, p in enumerate(procs)]
    d = None
    try:
        d = labcheck.student_dispatcher(lab, repo, pods, "policies.py:PowerOfTwo")
        killer = threading.Timer(1.5, procs[1].stop, kwargs={"sig_kill": True})
        killer.start()
        r = load.run(d.url, "digits", rate=80, seed=9, timeout_s=5, repo=repo, **MEASURE)
        killer.join()
    finally:
        if d is not None:
            d.stop(sig_kill=True)
        for p in procs:
            p.stop(sig_kill=True)
    record.value("requests per pod", str(dict(sorted(r.per_pod.items()))))
    record.value("failed", r.errors)
    expect(r.errors, "==", 0, "requests failed after a pod died (the dispatcher retries)")
    # Mostly about failing cleanly; the throughput bar is low because graders may
    # run several submissions at once on a 2-core machine.
    expect(round(r.throughput, 1), ">=", 40.0, "throughput with one pod down", "req/s")
