"""Lab 05 (LLM serving): the engine consulting a scheduling policy in another
process (nslab.llm.remote, policy kind llm-scheduling), and hostile
submissions graded with the real runner. Solution full marks / starter less
is tests/test_labs.py's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from grading_support import DATA, graded_as, survivors

from nslab.labs import find_lab, labs_root

LAB = "05-llm-serving"
HOSTILE = DATA / "lab05"
PREFIX = "l5h"  # instance names and host paths of these gradings
USER = "l5hu"  # their sandbox users: l5hu, l5hu1 (removed after)
# The starter's points: "the engine runs with your policy" and "retrieval.py
# answers every question", on both variants (tests/test_labs.py grades it).
STARTER = 4

POLICIES = """
import time

class Reverse:
    def order(self, view):
        return [w.request_id for w in reversed(view.waiting)]

class Sleepy:
    def order(self, view):
        time.sleep(0.3)
        return [w.request_id for w in view.waiting]

class Garbage:
    def order(self, view):
        return ["nobody"] + [w.request_id for w in view.waiting]
"""


def _engine(sock: Path):
    from nslab.llm.engine import EngineConfig, LLMEngine
    from nslab.llm.remote import RemoteSchedulingPolicy

    policy = RemoteSchedulingPolicy(str(sock), deadline_s=0.05)
    cfg = EngineConfig(block_size=4, num_blocks=64, max_num_seqs=2, max_num_batched_tokens=16)
    return LLMEngine.from_name("tiny", cfg, policy=policy), policy


def _generate(engine, prompts):
    from nslab.llm.sequence import SamplingParams

    p = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    return [s.output_ids for s in engine.generate(prompts, p)]


def _runner(sock: Path, spec: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nslab.policy.runner", "--connect", str(sock), spec],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _connected(policy, want: bool, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while policy.link.live != want and time.monotonic() < deadline:
        time.sleep(0.02)
    assert policy.link.live == want


@pytest.mark.parametrize("name", ["Reverse", "Sleepy", "Garbage"])
def test_remote_policy_decides_or_falls_back(tmp_path, name):
    """A policy process decides the admission order over the socket; a late or
    invalid answer gets FCFS and is counted; outputs stay the model's own."""
    (tmp_path / "pol.py").write_text(POLICIES)
    sock = tmp_path / "l5-policy.sock"
    engine, policy = _engine(sock)
    prompts = [[3 + i, 40 + i, 7, 9, 11, 13] for i in range(5)]
    try:
        alone = _generate(engine, prompts)  # nobody connected: FCFS, counted absent
        assert policy.link.counts["absent"] > 0 and policy.link.counts["ok"] == 0
        proc = _runner(sock, f"{tmp_path / 'pol.py'}:{name}")
        try:
            _connected(policy, True)
            before = dict(policy.link.counts)
            got = _generate(engine, prompts)
        finally:
            proc.kill()
            proc.wait()
        counts = {k: v - before[k] for k, v in policy.link.counts.items()}
        # Greedy outputs do not depend on the admission order (oracle: the FCFS run).
        assert got == alone
        if name == "Reverse":
            assert counts["ok"] > 0 and sum(counts.values()) == counts["ok"], counts
            assert "ok" in "".join(policy.metrics_lines())
        elif name == "Sleepy":
            assert counts["late"] > 0 and counts["ok"] == 0, counts
        else:
            assert counts["invalid"] > 0 and counts["ok"] == 0, counts
    finally:
        policy.close()


def _submission(
    tmp_path: Path, name: str, scheduler: str, retrieval: str | None, tail: str = ""
) -> tuple:
    sub = tmp_path / name
    shutil.copytree(labs_root() / LAB / "starter", sub)
    mark = f"l5mark{uuid.uuid4().hex[:10]}"
    text = (HOSTILE / scheduler).read_text().replace("@@MARK@@", mark) + tail
    (sub / "scheduler.py").write_text(text)
    if retrieval:
        shutil.copy(HOSTILE / retrieval, sub / "retrieval.py")
    shutil.copy(HOSTILE / "flood_llm.py", sub / "flood_llm.py")
    return sub, mark


@pytest.mark.slow
@pytest.mark.root
def test_hostile_submissions_gain_nothing(tmp_path):
    """Importing the kit's policy (and trying the solution's), patching the
    engine's classes, forging metrics, results and the curve, a child that
    outlives the submission and floods the engine, garbage and late answers,
    reading the hidden question set, a policy that admits nothing: none scores
    more than the starter, and the grading ends in bounded time."""
    if os.geteuid() != 0:
        pytest.skip("grading needs root (sandbox users)")
    from nslab.grading.runner import grade_batch

    kit, m1 = _submission(tmp_path, "kit", "kit_scheduler.py", None)
    bad, m2 = _submission(tmp_path, "bad", "hostile_scheduler.py", "hostile_retrieval.py")
    starve, m3 = _submission(
        tmp_path, "starve", "hostile_scheduler.py", None, "\nPrefixBatching = Starver\n"
    )
    with graded_as(PREFIX, USER):
        rs = {
            r.name: r
            for r in grade_batch(find_lab(LAB), [kit, bad, starve], tmp_path / "out", 2, USER)
        }
    for name, r in rs.items():
        assert r.status == "ok", r
        assert r.score <= STARTER, (name, [(t["name"], t["outcome"], t["reason"]) for t in r.tests])
    doc = json.loads((tmp_path / "out" / "bad" / "results.json").read_text())
    answers = next(t for t in doc["tests"] if t["name"].startswith("the engine runs"))
    assert "steps decided by your policy: expected more than 0, observed 0" in answers["output"]
    curve = next(t for t in doc["tests"] if t["name"].startswith("curve.csv"))
    assert curve["status"] != "passed", curve  # the forged flat curve has the wrong shape
    assert not survivors([m1, m2, m3]), survivors([m1, m2, m3])


@pytest.mark.root
def test_lab_start_runs_the_engine_for_step_2_and_stop_ends_it(tmp_path):
    """`sudo nslab lab start 05-llm-serving`: the engine of the guide's step 2
    on port 8050; `nslab bench serve` measures it; `lab stop` ends it."""
    import socket

    from nslab import cgroup

    if os.geteuid() != 0:
        pytest.skip("lab start needs root")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8050)) == 0:
            pytest.skip("port 8050 is in use here")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nslab", *args], capture_output=True,
                              text=True, timeout=180, cwd=tmp_path)  # fmt: skip

    up = cli("lab", "start", LAB)
    try:
        assert up.returncode == 0, up.stderr
        bench = cli("bench", "serve", "--port", "8050", "--random-input-len", "96",
                    "--random-output-len", "4", "--num-prompts", "3", "--max-concurrency", "1",
                    "--ignore-eos")  # fmt: skip
        assert bench.returncode == 0, bench.stderr
        assert "Successful requests:                    3" in bench.stdout, bench.stdout
    finally:
        down = cli("lab", "stop", LAB)
    assert down.returncode == 0, down.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 8050)) != 0, "the engine outlived `lab stop`"
    assert "lab5" not in cgroup.labs()
