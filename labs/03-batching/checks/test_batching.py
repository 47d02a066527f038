"""Checks of lab 3 (dynamic batching under a latency SLO).

The pod runs the student's pod.yaml and batching policy on the `slow`
sim-gpu profile (latency(b) = 20 ms + 1 ms * b up to b = 32): unbatched it
serves about 47 requests/s, so the target rate is out of reach without
batching. The grader's load generator offers Poisson arrivals at the target
rate and measures p99 and goodput; outputs are compared with the model's
reference outputs.

The pod is the grader's (root); the student's policy class runs sandboxed in
its own process and is consulted over the policy protocol (nslab.policy):
the device's timing never leaves the pod, and a late or invalid answer
launches one request alone. The baseline is measured before any student
process runs; curve.csv is compared with the grader's own measurement."""

from __future__ import annotations

import pytest
import yaml

from nslab.serving import batching, labcheck, load, local
from nslab.serving.devices import PROFILES

TARGET_RATE = 150.0  # requests/s offered (Poisson): 3x what the pod serves unbatched
SLO_MS = 100.0  # p99 objective
GAIN = 2.5  # goodput must reach GAIN x the unbatched pod's best throughput
FIXED = {
    "model": "digits",
    "device": "sim-gpu",
    "profile": "slow",
    "queue_limit": 512,
    "concurrency": 1,
}
STUDENT_KEYS = {"max_batch_size", "max_queue_delay_us", "policy"}
MEASURE = {"warmup_s": 1.0, "window_s": 2.0, "stable_windows": 0, "max_windows": 3}
BUILTIN_POLICIES = ("", "none", "triton")


@pytest.fixture(scope="module")
def repo():
    with labcheck.readable_repo() as path:
        yield path


def student_config(lab) -> tuple[dict, str | None]:
    """(the pod's config, the student's FILE.py:Class or None for a built-in rule)."""
    text = lab.read_output("pod.yaml")
    if text is None:
        raise AssertionError("expected pod.yaml in your submission, observed none")
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AssertionError(f"pod.yaml is not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise AssertionError("pod.yaml must be a mapping of keys, e.g. max_batch_size: 8")
    unknown = set(cfg) - STUDENT_KEYS
    if unknown:
        raise AssertionError(
            f"pod.yaml: keys {sorted(unknown)} are fixed by the lab; you set only "
            f"{sorted(STUDENT_KEYS)}"
        )
    mbs = cfg.get("max_batch_size", 1)
    if not isinstance(mbs, int) or isinstance(mbs, bool) or not 1 <= mbs <= 256:
        raise AssertionError(f"pod.yaml: max_batch_size must be an integer 1..256, got {mbs!r}")
    spec = str(cfg.pop("policy", "") or "")
    if spec in BUILTIN_POLICIES:
        return {**cfg, **FIXED, "policy": spec}, None
    path, sep, cls = spec.rpartition(":")
    if not sep or not path.endswith(".py") or path.startswith("/") or ".." in path.split("/"):
        raise AssertionError(
            f"pod.yaml: policy {spec!r}: write it as FILE.py:ClassName (a file of your "
            f"submission), or one of {', '.join(repr(p) for p in BUILTIN_POLICIES)}"
        )
    return {**cfg, **FIXED}, spec


@pytest.fixture(scope="module")
def unbatched(lab, repo):
    """The same device without batching, at its best: two clients keep it busy.
    Measured first, while no student process runs."""
    lab.kill_student()
    procs = labcheck.grader_pods(repo, dict(FIXED, max_batch_size=1))
    try:
        return load.run(procs[0].url, "digits", concurrency=2, repo=repo, **MEASURE)
    finally:
        for p in procs:
            p.stop(sig_kill=True)


@pytest.fixture(scope="module")
def measured(lab, repo, unbatched):
    """The grader's pod with your pod.yaml, consulting your policy process."""
    cfg, spec = student_config(lab)
    with labcheck.policy_dir(lab) as d:
        student = None
        if spec:
            cfg["policy"] = f"socket:{d / 'policy.sock'}"
        (pod,) = labcheck.grader_pods(repo, cfg)
        try:
            if spec:
                student = labcheck.StudentPolicy(lab, spec, d / "policy.sock").start()
                labcheck.wait_policy(pod.url, student)

            def once():
                before = labcheck.policy_counts(pod.url) if spec else {}
                r = load.run(
                    pod.url,
                    "digits",
                    rate=TARGET_RATE,
                    slo_ms=SLO_MS,
                    verify=True,
                    repo=repo,
                    seed=3,
                    timeout_s=10,
                    **MEASURE,
                )
                after = labcheck.policy_counts(pod.url) if spec else {}
                r.policy_counts = {k: v - before.get(k, 0) for k, v in after.items()}  # type: ignore[attr-defined]
                r.policy_log = student.log_tail() if student else ""  # type: ignore[attr-defined]
                return r

            # a run that overloaded the pod leaves a backlog: measure again only
            # once it drained (a late policy slows the drain: that run counts)
            return labcheck.measured_on_time(once, ready=lambda: local.wait_idle([pod.url], 30))
        finally:
            pod.stop(sig_kill=True)
            if student:
                student.stop()


def _observe(record, r) -> None:
    record.value("offered rate", round(r.achieved_rate, 1), "req/s")
    record.value("throughput", round(r.throughput, 1), "req/s")
    record.value("goodput", round(r.goodput or 0.0, 1), "req/s")
    record.value("p50", round(r.latency["p50_ms"], 2), "ms")
    record.value("p99", round(r.latency["p99_ms"], 2), "ms")
    record.value("rejected", r.rejected)
    record.value("answers by status", str(r.status_codes))
    record.cdf(f"latency at {TARGET_RATE:g} req/s", r.latencies_ms)


@pytest.mark.points(2)
def test_answers_correctly(lab, measured, record, expect):
    """the pod runs with your pod.yaml and answers correctly"""
    _observe(record, measured)
    expect(measured.ok, ">", 0, "successful inferences")
    expect(measured.mismatches, "==", 0, "answers differing from the model's reference outputs")
    expect(measured.errors, "==", 0, "failed requests")
    counts = measured.policy_counts
    if counts:
        for k, v in counts.items():
            record.value(f"policy decisions: {k}", v)
        if labcheck.fallbacks(counts) and measured.policy_log:
            record.note(f"your policy's last output:\n{measured.policy_log}")
        labcheck.note_attempts(record, measured, "")
        # A late or invalid answer launched one request alone instead (no batching).
        expect(
            labcheck.fallbacks(counts),
            "<=",
            labcheck.tolerated(counts),
            "decisions your policy did not answer in time or validly (late, invalid, error, absent)",
        )


@pytest.mark.points(4)
def test_p99_within_slo(lab, measured, record, expect):
    """p99 latency within the SLO at the target rate"""
    _observe(record, measured)
    expect(measured.rejected, "==", 0, "requests rejected (queue full)")
    expect(round(measured.throughput, 1), ">=", 0.9 * TARGET_RATE, "throughput", "req/s")
    expect(round(measured.latency["p99_ms"], 1), "<=", SLO_MS, "p99 latency", "ms")
    # The grader's own health: a pass counts only if it offered the load it claims.
    assert measured.achieved_rate >= 0.9 * TARGET_RATE, (
        f"grader problem: offered only {measured.achieved_rate:.0f} of {TARGET_RATE:g} req/s; "
        "the machine is overloaded, grade again"
    )


@pytest.mark.points(4)
def test_goodput_beats_no_batching(lab, measured, unbatched, record, expect):
    """goodput at least 2.5x what the pod serves without batching"""
    record.value("unbatched throughput", round(unbatched.throughput, 1), "req/s")
    record.value("your goodput", round(measured.goodput or 0.0, 1), "req/s")
    expect(
        round(measured.goodput or 0.0, 1),
        ">=",
        round(GAIN * unbatched.throughput, 1),
        f"goodput (SLO {SLO_MS:g} ms)",
        "req/s",
    )


PROBE_MAX_BATCH = 32


def _state(queued: int, wait_s: float) -> dict:
    return dict(
        now=0.0,
        queued_requests=queued,
        queued_items=queued,
        oldest_wait_s=wait_s,
        max_batch_size=PROBE_MAX_BATCH,
        max_queue_delay_s=0.0,
        idle_instances=1,
    )


PROBES = {"full": _state(40, 0.0), "young": _state(2, 0.0005), "old": _state(3, 0.070)}
PROBES["old_one"] = _state(1, 0.080)


@pytest.mark.points(3)
def test_policy_behaviour(lab, record, expect):
    """your batching policy waits to batch, but never past the SLO"""
    _, spec = student_config(lab)
    assert spec, "pod.yaml names no policy of yours (policy: batching_policy.py:ClassName)"
    est = [PROFILES["slow"].latency_s(b) for b in range(2 * PROBE_MAX_BATCH + 2)]
    got, counts, _, log = labcheck.ask_policy(
        lab,
        spec,
        "batching",
        {"estimate_s": est},
        batching.Decision,
        list(PROBES.values()),
        batching._check,
    )
    answers = dict(zip(PROBES, got, strict=True))
    if labcheck.fallbacks(counts):
        record.note(f"answers: {counts}; your policy's last output:\n{log}")
    assert all(a is not None for a in answers.values()), (
        f"your policy gave no valid answer to some questions ({counts}); its output:\n{log}"
    )
    got = {k: a.launch for k, a in answers.items()}
    for k, v in got.items():
        record.value(f"decide({k})", v)
    expect(got["full"], "==", 32, "items launched with 40 queued (max_batch_size 32)")
    expect(got["young"], "==", 0, "items launched with 2 requests queued for 0.5 ms (should wait)")
    expect(got["old"], ">=", 3, "items launched when the oldest of 3 waited 70 ms (SLO 100 ms)")
    expect(got["old_one"], ">=", 1, "items launched when a lone request waited 80 ms")


def _curve_rows(lab) -> list[dict]:
    import csv
    import io

    text = lab.read_output("curve.csv")
    assert text is not None, (
        "expected curve.csv (results.csv of `nslab load ... --rate R1,R2,... --out DIR`), "
        "observed none"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    need = {"rate", "throughput", "p50_ms", "p99_ms"}
    assert rows and need <= set(rows[0]), (
        f"curve.csv: expected columns {sorted(need)}, observed "
        f"{list(rows[0]) if rows else 'no rows'}"
    )
    try:
        return [{k: float(r[k]) for k in need} for r in rows if r["rate"]]
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"curve.csv: a value is not a number: {exc}") from None


# The grader re-measures two of your load levels on its own unbatched pod:
# your p50 there must be within P50_TOL x its p50 + P50_ABS_MS; your highest
# throughput within TOP_TOL of what its two clients got from the same pod.
P50_TOL, P50_ABS_MS, TOP_TOL = 0.35, 5.0, (0.75, 1.15)


@pytest.mark.points(2)
def test_curve_measured(lab, repo, unbatched, record, expect):
    """curve.csv: your latency/throughput curve of the unbatched pod, as the grader measures it"""
    rows = _curve_rows(lab)
    rates = sorted({r["rate"] for r in rows})
    record.value("load levels", len(rates))
    expect(len(rates), ">=", 4, "load levels measured")
    top = max(r["throughput"] for r in rows)
    record.value("highest throughput", round(top, 1), "req/s")
    # The unbatched slow pod saturates near 47 req/s: the curve must reach its knee.
    expect(top, ">=", 35.0, "highest throughput in the curve (must reach the knee)", "req/s")
    cap = unbatched.throughput
    record.value("grader's unbatched throughput", round(cap, 1), "req/s")
    expect(round(top / cap, 2), ">=", TOP_TOL[0], "your highest throughput / the grader's")
    expect(round(top / cap, 2), "<=", TOP_TOL[1], "your highest throughput / the grader's")
    below = [r for r in rates if 0 < r <= 0.6 * cap]
    assert below, (
        f"curve.csv has no load level at or below 60 % of capacity ({0.6 * cap:.0f} req/s)"
    )
    lab.kill_student()
    (pod,) = labcheck.grader_pods(repo, dict(FIXED, max_batch_size=1))
    try:
        for rate in sorted({below[0], below[-1]}):
            mine = next(r for r in rows if r["rate"] == rate)
            r = load.run(
                pod.url,
                "digits",
                rate=rate,
                seed=11,
                repo=repo,
                warmup_s=0.5,
                window_s=2.0,
                stable_windows=0,
                max_windows=1,
            )
            g = r.latency["p50_ms"]
            record.value(
                f"p50 at {rate:g} req/s: yours / grader's", f"{mine['p50_ms']:.1f} / {g:.1f}", "ms"
            )
            expect(
                round(abs(mine["p50_ms"] - g), 1),
                "<=",
                round(P50_TOL * g + P50_ABS_MS, 1),
                f"|your p50 - the grader's| at {rate:g} req/s",
                "ms",
            )
    finally:
        pod.stop(sig_kill=True)
