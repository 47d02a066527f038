"""Checks of lab 4 (load balancing heterogeneous inference pods).

Fleet: two fast pods (20 ms per request) and two slow ones (40 ms), each
unbatched with a queue of 64: capacity 50 + 50 + 25 + 25 = 150 req/s.
At 80 % load (120 req/s) round-robin sends 30 req/s to each slow pod, more
than it can serve, so its queue and the tail explode; a load-aware policy
keeps every pod below capacity. Round-robin and the student's policies are
measured against the same fleet in the same run.

The pods and the dispatcher are the grader's (root). The student's policy
classes run sandboxed, one process per policy, and the dispatcher consults
them over the policy protocol (nslab.policy); a late or invalid answer is
replaced by round-robin's choice and counted. Requests per pod come from the
pods' own metrics. Round-robin is measured first, while no student process
runs."""

from __future__ import annotations

import threading

import pytest

from nslab.serving import labcheck, load, local
from nslab.serving.policies import Choice

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


def _dispatch(lab, fleet, policy: str, rate: float, seed: int, repo, **kw) -> load.LoadResult:
    """The grader's dispatcher over `fleet`, with round-robin or the student's
    policy (a sandboxed process it consults), under the grader's load."""
    with labcheck.policy_dir(lab) as d:
        student = None
        if policy == "round-robin":
            lab.kill_student()  # the baseline: no student process may run
            disp = local.start_dispatcher(fleet, "round-robin")
        else:
            disp = local.start_dispatcher(fleet, f"socket:{d / 'policy.sock'}")
        try:
            if policy != "round-robin":
                student = labcheck.StudentPolicy(lab, f"policies.py:{policy}", d / "policy.sock")
                student.start()
                labcheck.wait_policy(disp.url, student)
            before = labcheck.served_per_pod(dict(fleet))
            r = load.run(disp.url, "digits", rate=rate, seed=seed, repo=repo, **kw)
            after = labcheck.served_per_pod(dict(fleet))
            r.per_pod = {n: after[n] - before.get(n, 0) for n in after}
            r.policy_counts = labcheck.policy_counts(disp.url) if student else {}  # type: ignore[attr-defined]
            r.policy_log = student.log_tail() if student else ""  # type: ignore[attr-defined]
            return r
        finally:
            disp.stop(sig_kill=True)
            if student:
                student.stop()


def measure(lab, repo, fleet, policy: str) -> load.LoadResult:
    # An earlier overloaded run leaves a backlog in the pods: let it drain first.
    assert local.wait_idle([u for _, u in fleet], 30), "grader problem: the pods stayed busy"
    return _dispatch(
        lab, fleet, policy, RATE, 5, repo, slo_ms=SLO_MS, verify=True, timeout_s=10, **MEASURE
    )


@pytest.fixture(scope="module")
def runs(lab, repo, fleet):
    """Round-robin first (no student process runs), then the student's two policies."""
    out: dict = {"round-robin": measure(lab, repo, fleet, "round-robin")}
    for policy in ("PowerOfTwo", "JoinShortestQueue"):
        try:
            out[policy] = labcheck.measured_on_time(lambda p=policy: measure(lab, repo, fleet, p))
        except Exception as exc:  # reported by the checks that need it
            out[policy] = exc
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
        counts = r.policy_counts
        for k, v in counts.items():
            record.value(f"{policy} decisions: {k}", v)
        if labcheck.fallbacks(counts) and r.policy_log:
            record.note(f"{policy}: your policy's last output:\n{r.policy_log}")
        labcheck.note_attempts(record, r, f"{policy}: ")
        expect(r.ok, ">", 0, f"{policy}: successful inferences")
        expect(r.mismatches + r.errors, "==", 0, f"{policy}: failed or wrong answers")
        _own_decisions(r, policy, expect)


def _own_decisions(r, policy: str, expect) -> None:
    """A check of what a policy does counts only the policy's own placements:
    where it was late or invalid, round-robin's choice stood in (a fallback
    must never earn what the policy did not do)."""
    counts = r.policy_counts
    expect(
        labcheck.fallbacks(counts),
        "<=",
        labcheck.tolerated(counts),
        f"{policy}: requests your policy did not place in time or validly",
    )


def _tail_checks(runs, policy, record, expect) -> None:
    rr, r = result(runs, "round-robin"), result(runs, policy)
    _observe(record, "round-robin", rr)
    _observe(record, policy, r)
    _own_decisions(r, policy, expect)
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
        _own_decisions(r, policy, expect)
        total = sum(r.per_pod.values()) or 1
        for c in FLEET:
            share = r.per_pod.get(c["name"], 0) / total
            record.value(f"{policy} share of {c['name']}", round(share, 3))
            expect(
                round(share, 3), ">=", 0.05, f"{policy}: share of requests served by {c['name']}"
            )
        expect(r.rejected, "==", 0, f"{policy}: requests rejected by a pod's full queue")


def _pods(outstanding: list[int], queues: list[float]) -> list[dict]:
    return [
        dict(
            name=f"p{i}",
            url=f"http://127.0.0.1:{9000 + i}",
            outstanding=o,
            reported_queue=q,
            sent_since_report=0,
            done_since_report=0,
            served=0,
            failures=0,
        )
        for i, (o, q) in enumerate(zip(outstanding, queues, strict=True))
    ]


def _probe(lab, policy: str, states: list[dict]):
    from nslab.serving.policies import _check

    got, counts, info, log = labcheck.ask_policy(
        lab, f"policies.py:{policy}", "dispatch", {}, Choice, states, _check
    )
    assert all(c is not None for c in got), (
        f"your {policy} gave no valid answer to some questions ({counts}); its output:\n{log}"
    )
    return [c.pod for c in got], info


@pytest.mark.points(2)
def test_policies_do_what_they_say(lab, record, expect):
    """PowerOfTwo compares two random pods; JoinShortestQueue follows the pods' queues"""
    import collections

    req = {"model": "digits", "key": ""}
    p2c = {"request": req, "pods": _pods([0, 10, 20, 30, 40], [0] * 5)}
    picks, _ = _probe(lab, "PowerOfTwo", [p2c] * 2000)
    c = collections.Counter(picks)
    n = sum(c.values())
    # Loads 0,10,20,30,40: p0 wins each of the 4 of 10 pairs it is in (40 %);
    # p4 never wins; a full scan would always pick p0.
    record.value("PowerOfTwo picks", str(dict(sorted(c.items()))))
    expect(c.get("p4", 0), "==", 0, "PowerOfTwo: picks of the busiest pod")
    expect(round(c.get("p0", 0) / n, 2), "<=", 0.5, "PowerOfTwo: share of the idlest pod")
    expect(round(c.get("p0", 0) / n, 2), ">=", 0.3, "PowerOfTwo: share of the idlest pod")
    jsq = {"request": req, "pods": _pods([0, 10, 20, 30, 40], [7, 3, 9, 0, 5])}
    (choice,), info = _probe(lab, "JoinShortestQueue", [jsq])
    expect(choice, "==", "p3", "JoinShortestQueue: pod chosen (queues 7,3,9,0,5)")
    expect(bool(info.get("needs_metrics")), "==", True, "JoinShortestQueue.needs_metrics")


@pytest.mark.points(2)
def test_survives_a_pod_failure(lab, repo, record, expect):
    """the dispatcher with your PowerOfTwo survives a pod dying mid-run"""
    procs = labcheck.grader_pods(repo, *[dict(FAST, name=f"k{i}") for i in range(3)])
    pods = [(f"k{i}", p.url) for i, p in enumerate(procs)]
    try:
        killer = threading.Timer(1.5, procs[1].stop, kwargs={"sig_kill": True})
        killer.start()
        r = _dispatch(lab, pods, "PowerOfTwo", 80, 9, repo, timeout_s=5, **MEASURE)
        killer.join()
    finally:
        for p in procs:
            p.stop(sig_kill=True)
    record.value("requests per pod", str(dict(sorted(r.per_pod.items()))))
    record.value("failed", r.errors)
    _own_decisions(r, "PowerOfTwo", expect)
    expect(r.errors, "==", 0, "requests failed after a pod died (the dispatcher retries)")
    # Mostly about failing cleanly; the throughput bar is low because graders may
    # run several submissions at once on a 2-core machine.
    expect(round(r.throughput, 1), ">=", 40.0, "throughput with one pod down", "req/s")
