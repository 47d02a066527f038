"""Fault injection into bring-up: SIGKILL of the supervisor or of `nslab up`
itself at a random moment, then `nslab down`. Every run must leave the host
inventory (links, bridges, netns, processes, cgroups, containers, qdiscs,
iptables rules, sysctls) exactly as it was.

The default suite runs 10 kills; NSLAB_FAULT_RUNS=100 runs the long version
(marked slow by its size only when asked for)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from test_engine_lifecycle import IGNORE

from nslab import cgroup
from nslab.engine.inventory import diff, snapshot
from nslab.engine.state import LabState, lab_names

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and OVS"),
]

RUNS = int(os.environ.get("NSLAB_FAULT_RUNS", "10"))
NAME = "tefi"


def _supervisor_pid(name: str) -> int | None:
    """The supervisor, from the lab's cgroup or its state file."""
    if cgroup.available():
        pids = cgroup.pids(name, "supervisor")
        if pids:
            return pids[0]
    try:
        sup = LabState.load(name).supervisor
    except (FileNotFoundError, ValueError):
        return None
    return sup.pid if sup else None


def _settle(before: dict, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while (changes := diff(before, snapshot(), IGNORE)) and time.monotonic() < deadline:
        time.sleep(0.1)  # namespaces and ports die asynchronously
    return changes


@pytest.mark.slow
def test_sigkill_at_random_points_of_bring_up_leaves_nothing():
    if NAME in lab_names():
        subprocess.run([sys.executable, "-m", "nslab", "down", NAME], capture_output=True)
    rng = random.Random(int(os.environ.get("NSLAB_FAULT_SEED", "7")))
    before = snapshot()
    report = []
    for i in range(RUNS):
        victim = rng.choice(["supervisor", "up"])
        delay = rng.uniform(0.0, 2.5)
        up = subprocess.Popen(
            [sys.executable, "-m", "nslab", "up", "fat-tree", "-p", "k=2", "--name", NAME],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        pid = up.pid if victim == "up" else _supervisor_pid(NAME)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        up.wait(timeout=120)
        down = subprocess.run(
            [sys.executable, "-m", "nslab", "down", NAME], capture_output=True, text=True
        )
        changes = _settle(before)
        report.append(f"run {i}: kill {victim} after {delay:.2f} s, down rc={down.returncode}")
        assert not changes, f"{report[-1]}: host differs: {str(changes)[:1500]}"
    assert NAME not in lab_names() and NAME not in cgroup.labs()
