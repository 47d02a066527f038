"""Remove exactly what a lab created, from its recorded state alone.

Works without the supervisor (crashed or SIGKILLed): every step is idempotent
and touches only resources named in the state file or labelled with the lab's
name: its cgroup `nslab.slice/<lab>` (every process the lab started), and
what each node kind labelled (OVS external-ids `nslab-lab`, Docker label
`nslab.lab`); the process environment `NSLAB_LAB` where there are no cgroups.
Nothing is matched by a name pattern alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from nslab import cgroup
from nslab.engine import sysctl
from nslab.engine.state import LabState, proc_start_time
from nslab.kinds import all_kinds

LABEL = "NSLAB_LAB"


def labelled_pids(lab: str | None = None) -> dict[int, str]:
    """Processes whose environment carries NSLAB_LAB (=lab, or any when None)."""
    out: dict[int, str] = {}
    me = _ancestors()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in me:
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(b"NSLAB_LAB="):
                name = var[len("NSLAB_LAB=") :].decode(errors="replace")
                if lab is None or name == lab:
                    out[int(entry.name)] = name
                break
    return out


def _ancestors() -> set[int]:
    """This process and its parents: never kill the hand that runs `down`."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def kill_labelled(lab: str, timeout: float = 10) -> None:
    """SIGKILL every recorded or labelled process of the lab, then wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        pids = labelled_pids(lab)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def existing_links(names: list[str]) -> list[str]:
    return [n for n in names if Path("/sys/class/net", n).exists()]


def teardown(state: LabState, progress: Callable[[str], None] = lambda m: None) -> None:
    lab = state.name
    progress(f"stopping lab {lab}")
    # Processes first: host shells die, their namespaces and veths go with them.
    # The lab's cgroup holds all of them, forked children and daemons included.
    cgroup.kill(lab)
    for p in state.procs:
        if p.alive():
            try:
                os.killpg(p.pid, signal.SIGKILL) if os.getpgid(p.pid) == p.pid else os.kill(
                    p.pid, signal.SIGKILL
                )
            except (ProcessLookupError, PermissionError):
                pass
    kill_labelled(lab)
    # Each kind removes what it made (containers, bridges), from the state.
    for kind in all_kinds().values():
        kind.teardown(state)
    stale = existing_links(state.root_ifaces)
    if stale:
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"link del {n}\n" for n in stale),
            capture_output=True,
            text=True,
        )
    for rule in state.iptables:
        subprocess.run(["iptables", "-D", *rule], capture_output=True)
    sysctl.release(lab)
    _wait_gone(state)
    shutil.rmtree(state.dir, ignore_errors=True)


def _wait_gone(state: LabState, timeout: float = 30) -> None:
    """The kernel destroys namespaces asynchronously: wait until the lab's
    processes and root-namespace interfaces are really gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in state.procs if proc_start_time(p.pid) == p.start]
        if not alive and not existing_links(state.root_ifaces + state.linux_bridges):
            return
        time.sleep(0.05)
