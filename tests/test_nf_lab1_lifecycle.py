"""Lab 1 started and stopped as a student does (`nslab lab start 01-nfv`,
`nslab lab stop 01-nfv`), then the process table is searched for what the
lab ran: the service pids `lab start` recorded (with their start times) and
every process the lab's owner holds: its cgroup `nslab.slice/<lab>` (or, on
hosts without cgroups, the NSLAB_LAB label), which `nslab down` and `nslab
down --all` use to find processes (every process of the lab must be held by
it while it runs). The NFs run in their NF containers, which must be
gone too. Nothing is killed by name here: processes are only looked at.

The lab runs under its fixed instance name (lab.yaml `name: l1`), so this
test must not run beside someone's own `nslab lab start 01-nfv`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nslab import cgroup, containers
from nslab.cli.lab import STATE_DIR
from nslab.engine.state import proc_start_time
from nslab.engine.teardown import labelled_pids
from nslab.labs import find_lab, labs_root

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a real lab)"),
]

SPEC = find_lab("01-nfv", labs_root())
STATE = STATE_DIR / "01-nfv.json"


def nslab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nslab", *args], capture_output=True, text=True, timeout=timeout
    )


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(recorded: dict[int, int | None]) -> dict[int, str]:
    """Recorded pids that still run the same process (same start time)."""
    return {
        pid: cmdline(pid)
        for pid, start in recorded.items()
        if start is not None and proc_start_time(pid) == start
    }


def group_members(pgids: set[int]) -> dict[int, int | None]:
    """Every process in the given process groups (a service and its children)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) in pgids:
                    out[int(d)] = proc_start_time(int(d))
            except OSError:
                pass
    return out


def start_lab() -> tuple[dict, dict[int, int | None]]:
    if STATE.exists():
        pytest.skip(f"lab 01-nfv is already running here ({STATE}); stop it first")
    r = nslab("lab", "start", "01-nfv", "--submission", str(SPEC.path / "solution"))
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-2500:]
    state = json.loads(STATE.read_text())
    services = state["services"]
    assert set(services) == {"llm1", "llm2", "llm3", "napt", "ids", "lb1"}
    pgids = {s["pid"] for s in services.values()}
    procs = group_members(pgids)
    # the backends (python -m nslab.nf.backend) are among them, and carry the label
    backends = [p for p in procs if "nslab.nf.backend" in cmdline(p)]
    assert len(backends) >= 3, {p: cmdline(p) for p in procs}
    owned = owned_pids(state["instance"])
    strays = {p: cmdline(p) for p in procs if p not in owned}
    assert not strays, f"lab processes that {state['instance']}'s owner does not hold: {strays}"
    return state, procs


def owned_pids(instance: str) -> set[int]:
    """What `nslab down` and `down --all` find of a lab: its cgroup's
    processes, or (no cgroups on this host) those with its NSLAB_LAB label."""
    if cgroup.available():
        return set(cgroup.pids(instance))
    return set(labelled_pids(instance))


def gone(procs: dict[int, int | None], instance: str, timeout: float = 15) -> dict[int, str]:
    end = time.monotonic() + timeout
    while True:
        left = alive(procs)
        left.update({p: cmdline(p) for p in owned_pids(instance)})
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.2)


def test_lab_stop_leaves_no_process():
    state, procs = start_lab()
    try:
        r = nslab("lab", "stop", "01-nfv")
        assert r.returncode == 0, r.stderr[-2000:]
        left = gone(procs, state["instance"])
        assert not left, f"processes of the lab left after `nslab lab stop`: {left}"
        assert not Path(state["workdir"]).exists()
        assert not containers.list_containers(state["instance"]), "NF containers left"
    finally:
        if STATE.exists():
            nslab("lab", "stop", "01-nfv")
