"""The policy protocol (nslab.policy) between real processes: a pod (and a
dispatcher) the test starts, consulting a policy process over a Unix socket.
A policy that answers well is used; one that is late, answers garbage,
raises or does not load is replaced by the fallback and counted, and the
component keeps serving."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nslab.labs import labs_root
from nslab.serving import load, local, metrics
from nslab.serving.testing import model_repo  # noqa: F401  (fixture)

LAB3_POLICY = labs_root() / "03-batching" / "solution" / "batching_policy.py"
SLOW = {"model": "digits", "device": "sim-gpu", "profile": "slow", "max_batch_size": 32}
ONE = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
).encode()


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return metrics.parse(r.read().decode())


def counts(url: str) -> dict[str, int]:
    return {k["outcome"]: int(v) for k, v in scrape(url)["nslab_policy_decisions_total"]}


def infer(url: str, n: int) -> list[int]:
    codes = []
    for _ in range(n):
        req = urllib.request.Request(url + "/v2/models/digits/infer", ONE, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            codes.append(r.status)
    return codes


@contextlib.contextmanager
def runner(sock: Path, spec: str) -> Iterator[subprocess.Popen]:
    p = subprocess.Popen(
        [sys.executable, "-m", "nslab.policy.runner", "--connect", str(sock), spec],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield p
    finally:
        p.kill()
        p.wait(5)


def wait_connected(url: str, proc: subprocess.Popen, want: int = 1) -> None:
    deadline = time.monotonic() + 20
    while metrics.value(scrape(url), "nslab_policy_connected") != want:
        assert time.monotonic() < deadline and (want == 0 or proc.poll() is None), (
            proc.stdout.read() if proc.poll() is not None else "not connected in 20 s"
        )
        time.sleep(0.05)


@pytest.fixture(scope="module")
def policy_pod(model_repo, tmp_path_factory):  # noqa: F811
    """A pod whose batching policy is whatever connects to its socket (one at
    a time: each test's policy process connects after the last one left)."""
    sock = tmp_path_factory.mktemp("tsrv-policy") / "policy.sock"
    with local.pods(dict(SLOW, name="tsrv-pp", policy=f"socket:{sock}")) as (pod,):
        yield pod, sock


def wait_gone(url: str) -> None:
    deadline = time.monotonic() + 10
    while metrics.value(scrape(url), "nslab_policy_connected") != 0:
        assert time.monotonic() < deadline, "the last policy is still connected"
        time.sleep(0.05)


def test_a_policy_process_batches_for_the_pod(policy_pod):
    pod, sock = policy_pod
    wait_gone(pod.url)
    before = counts(pod.url)
    with runner(sock, f"{LAB3_POLICY}:SloAwarePolicy") as p:
        wait_connected(pod.url, p)
        r = load.run(pod.url, "digits", rate=150, warmup_s=0.3, window_s=1.5, stable_windows=0,
                     max_windows=1, verify=True)  # fmt: skip
        m = scrape(pod.url)
        c = {k: v - before[k] for k, v in counts(pod.url).items()}
        with runner(sock, f"{LAB3_POLICY}:SloAwarePolicy") as second:  # one at a time
            assert second.wait(20) == 0 and "connection ended" in second.stdout.read()
        assert metrics.value(scrape(pod.url), "nslab_policy_connected") == 1  # the first
    assert r.ok > 100 and r.errors == r.mismatches == 0, r.line()
    assert c["ok"] > 20 and sum(c.values()) == c["ok"], c
    batches = metrics.value(m, "nslab_batches_total")
    assert metrics.value(m, "nslab_inference_items_total") / batches > 2  # it batched


BAD = {
    # sleeps past the 50 ms deadline: late, then given up on
    "late": "import time\nclass P:\n    def decide(self, s):\n        time.sleep(0.2)\n"
    "        return 1\n    def wake_after_s(self, s):\n        return None\n",
    # wrong types, out of range, NaN
    "invalid": "import itertools\nBAD = itertools.cycle(['2', 10**9, -1, None, 3.5, True])\n"
    "class P:\n    def decide(self, s):\n        return next(BAD)\n"
    "    def wake_after_s(self, s):\n        return float('nan')\n",
    # writes raw garbage to the runner's socket, then answers
    "garbage": "import gc, socket\nclass P:\n    def decide(self, s):\n"
    "        for o in gc.get_objects():\n            if isinstance(o, socket.socket):\n"
    "                o.sendall(b'{]garbage\\n' + b'x' * 100 + b'\\n')\n        return 1\n",
    # raises
    "error": "class P:\n    def decide(self, s):\n        raise RuntimeError('boom')\n",
    # does not even load
    "absent": "from nslab.serving.policies import JoinShortestQueue\nclass P:\n    pass\n",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_policy_is_replaced_and_counted(policy_pod, tmp_path, kind):
    pod, sock = policy_pod
    f = tmp_path / "tsrv_bad_policy.py"
    f.write_text(BAD[kind])
    wait_gone(pod.url)
    m0 = scrape(pod.url)
    before = counts(pod.url)
    with runner(sock, f"{f}:P") as p:
        if kind == "absent":
            assert p.wait(20) == 1 and "ImportError" in p.stdout.read()
        else:
            wait_connected(pod.url, p)
        codes = infer(pod.url, 12)
        c = {k: v - before[k] for k, v in counts(pod.url).items()}
    assert codes == [200] * 12  # the pod kept serving: fallback = one request alone
    outcome = "invalid" if kind == "garbage" else kind
    assert c[outcome] >= (1 if kind in ("late", "absent") else 6), c
    assert c["ok"] == 0, c
    if kind == "late":  # given up after 5 late answers: later decisions are not delayed
        assert c["late"] == 5 and c["absent"] >= 7, c
    served = metrics.value(scrape(pod.url), "nslab_requests_total", code="200")
    assert served - metrics.value(m0, "nslab_requests_total", code="200") == 12


def test_dispatcher_validates_the_choice(model_repo, tmp_path):  # noqa: F811
    """A dispatch policy naming a pod it was not offered gets round-robin instead."""
    fast = {"model": "digits", "device": "sim-gpu", "profile": "a=2,c=0,sat=1"}
    f = tmp_path / "tsrv_disp.py"
    f.write_text(
        textwrap.dedent("""
        class P:
            needs_metrics = True
            n = 0
            def choose(self, request, pods):
                self.n += 1
                return "nowhere" if self.n % 2 else min(pods, key=lambda p: p.outstanding)
        """)
    )
    sock = tmp_path / "d.sock"
    with local.pods(*[dict(fast, name=f"tsrv-d{i}") for i in range(2)]) as ps:
        d = local.start_dispatcher([(f"d{i}", p.url) for i, p in enumerate(ps)], f"socket:{sock}")
        try:
            with runner(sock, f"{f}:P") as p:
                wait_connected(d.url, p)
                codes = infer(d.url, 10)
                c = counts(d.url)
                with urllib.request.urlopen(d.url + "/v2/dispatcher", timeout=5) as r:
                    info = json.loads(r.read())
        finally:
            d.stop()
    assert codes == [200] * 10
    assert c["ok"] == 5 and c["invalid"] == 5, c
    assert info["policy"] == "P"
