"""Checks of lab 3 (dynamic batching under a latency SLO).

The pod runs the student's pod.yaml and batching policy on the `slow`
sim-gpu profile (latency(b) = 20 ms + 1 ms * b up to b = 32): unbatched it
serves about 47 requests/s, so the target rate is out of reach without
batching. The grader's load generator offers Poisson arrivals at the target
rate and measures p99 and goodput; outputs are compared with the model's
reference outputs."""

from __future__ import annotations

import pytest
import yaml

from nslab.serving import labcheck, load

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


@pytest.fixture(scope="module")
def repo():
    with labcheck.readable_repo() as path:
        yield path


def student_config(lab) -> dict:
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
    return {**cfg, **FIXED}


@pytest.fixture(scope="module")
def measured(lab, repo):
    pod = labcheck.student_pod(lab, repo, student_config(lab))
    try:
        return load.run(
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
    finally:
        pod.stop(sig_kill=True)


@pytest.fixture(scope="module")
def unbatched(repo):
    """The same device without batching, at its best: two clients keep it busy."""
    procs = labcheck.grader_pods(repo, dict(FIXED, max_batch_size=1))
    try:
        return load.run(procs[0].url, "digits", concurrency=2, repo=repo, **MEASURE)
    finally:
        for p in procs:
            p.stop(sig_kill=True)


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


POLICY_PROBE = r"""
import json, yaml
from nslab.serving.batching import QueueState
from nslab.serving.devices import PROFILES
spec = (yaml.safe_load(open("pod.yaml")) or {}).get("policy", "")
path, _, cls = spec.rpartition(":")
if not path:
    print(json.dumps({"error": "pod.yaml sets no `policy: batching_policy.py:ClassName`"}))
    raise SystemExit
import importlib.util
m = importlib.util.spec_from_file_location("student_policy", path)
mod = importlib.util.module_from_spec(m); m.loader.exec_module(mod)
policy = getattr(mod, cls)()
est = lambda b: PROFILES["slow"].latency_s(b)
def ask(queued, wait_s):
    s = QueueState(now=0.0, queued_requests=queued, queued_items=queued, oldest_wait_s=wait_s,
                   max_batch_size=32, max_queue_delay_s=0.0, idle_instances=1, estimate_s=est)
    return int(policy.decide(s))
print(json.dumps({"full": ask(40, 0.0), "young": ask(2, 0.0005), "old": ask(3, 0.070),
                  "old_one": ask(1, 0.080)}))
"""


@pytest.mark.points(3)
def test_policy_behaviour(lab, repo, record, expect):
    """your batching policy waits to batch, but never past the SLO"""
    got = labcheck.student_python(lab, repo, POLICY_PROBE)
    assert "error" not in got, got.get("error")
    for k, v in got.items():
        record.value(f"decide({k})", v)
    expect(got["full"], "==", 32, "items launched with 40 queued (max_batch_size 32)")
    expect(got["young"], "==", 0, "items launched with 2 requests queued for 0.5 ms (should wait)")
    expect(got["old"], ">=", 3, "items launched when the oldest of 3 waited 70 ms (SLO 100 ms)")
    expect(got["old_one"], ">=", 1, "items launched when a lone request waited 80 ms")


@pytest.mark.points(2)
def test_curve_measured(lab, record, expect):
    """curve.csv: your measured latency/throughput curve of the unbatched pod"""
    import csv
    import io

    text = lab.read_output("curve.csv")
    assert text is not None, (
        "expected curve.csv (results.csv of `nslab load ... --rate R1,R2,... --out DIR`), "
        "observed none"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    need = {"rate", "throughput", "p99_ms"}
    assert rows and need <= set(rows[0]), (
        f"expected columns {sorted(need)}, observed {list(rows[0]) if rows else 'no rows'}"
    )
    rates = sorted({float(r["rate"]) for r in rows if r["rate"]})
    record.value("load levels", len(rates))
    expect(len(rates), ">=", 4, "load levels measured")
    top = max(float(r["throughput"]) for r in rows)
    record.value("highest throughput", round(top, 1), "req/s")
    # The unbatched slow pod saturates near 47 req/s: the curve must reach its knee.
    expect(top, ">=", 35.0, "highest throughput in the curve (must reach the knee)", "req/s")
