"""nslab lab: list labs, start one with your code in place, stop it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path

from nslab import cgroup
from nslab.engine.state import RUN_DIR, proc_start_time
from nslab.errors import NslabError
from nslab.grading import sandbox
from nslab.grading.runner import PREFIX_ENV
from nslab.grading.runtime import GradedLab
from nslab.labs import LabSpec, find_lab, list_labs

VERB = "lab"
HELP = "list labs, start one with your submission in place (it stays up), stop it"
STATE_DIR = RUN_DIR / "labs"  # lab start/stop records, beside the engine's


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="labs found under labs/ (or $NSLAB_LABS)")
    s = sub.add_parser("start", help="bring a lab up with your code in place; it stays up")
    s.add_argument("lab", metavar="ID")
    s.add_argument(
        "--submission",
        "-s",
        type=Path,
        default=None,
        help="your folder (default: . if it has the files, else starter/)",
    )
    s.add_argument(
        "--variant", default=None, help="start a variant of the lab (lab.yaml `variants:`)"
    )
    t = sub.add_parser("stop", help="stop a lab started with `sudo nslab lab start`")
    t.add_argument("lab", metavar="ID")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list()
    if os.geteuid() != 0:
        raise NslabError("labs bring up network namespaces and need root: run it with sudo")
    spec = find_lab(args.lab)
    return _start(spec, args) if args.action == "start" else _stop(spec)


def _list() -> int:
    labs = list_labs()
    if not labs:
        print("no labs found (looked in $NSLAB_LABS or the repository's labs/)")
        return 0
    w = max(len(s.id) for s in labs)
    for s in labs:
        running = " (running)" if (STATE_DIR / f"{s.id}.json").exists() else ""
        print(f"{s.id:<{w}}  {s.title}{running}")
    return 0


def _submission(spec: LabSpec, given: Path | None) -> Path:
    if given is not None:
        if not given.is_dir():
            raise NslabError(f"{given}: not a folder")
        return given
    if spec.submit and all((Path(".") / f).is_file() for f in spec.submit):
        return Path(".")
    print(f"no {', '.join(spec.submit) or 'submission'} here: starting with the lab's starter/")
    return spec.path / "starter"


def _live_user() -> str:
    """The first `nslab-live` user that no running lab has: `lab stop` kills
    every process of its lab's user, so that user must be its lab's alone
    (and never a grading's, whose users are `nslab-student`...)."""
    taken = set()
    for f in STATE_DIR.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            taken.add(json.loads(f.read_text()).get("user"))
    users = (sandbox.slot_user(sandbox.LIVE_USER, i) for i in range(64))
    return next((u for u in users if u not in taken), sandbox.LIVE_USER)


def _start(spec: LabSpec, args: argparse.Namespace) -> int:
    state_file = STATE_DIR / f"{spec.id}.json"
    if state_file.exists():
        raise NslabError(f"lab {spec.id} is already running: `sudo nslab lab stop {spec.id}` first")
    variant = None
    if args.variant:
        variant = next((v for v in spec.variants if v.name == args.variant), None)
        if variant is None:
            known = ", ".join(v.name for v in spec.variants) or "none"
            raise NslabError(f"lab {spec.id} has no variant '{args.variant}' (variants: {known})")
    sub = _submission(spec, args.submission)
    user = _live_user()
    sandbox.ensure_user(user)
    limits = sandbox.Limits.from_dict(spec.limits)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE_DIR, 0o755)
    prefix = os.environ.get(PREFIX_ENV, "nslab")
    workdir = sandbox.make_workdir("/tmp", f"{prefix}-live-{spec.name}-", user, limits, sub)
    logs = STATE_DIR / spec.id
    shutil.rmtree(logs, ignore_errors=True)  # the previous run's logs
    # the playground too: what the guide has the student try things against
    live = dataclasses.replace(spec, services=spec.services + spec.playground)
    glab = GradedLab(live, workdir, user, limits, spec.name, logs, variant)
    try:
        glab.start()
    except BaseException:
        sandbox.remove_workdir(workdir)
        raise
    state = {
        "instance": spec.name,
        "workdir": str(workdir),
        "user": user,
        # pid and start time of each service's process group: `lab stop` kills
        # exactly these (a reused pid has another start time), whatever their user
        "services": {
            n: {"pid": p.pid, "start": proc_start_time(p.pid)} for n, p in glab.procs.items()
        },
        "ports": glab.ports,
    }
    state_file.write_text(json.dumps(state, indent=1))
    print(f"lab {spec.id} is up as '{spec.name}' with {sub.resolve()} (copied to {workdir})")
    if spec.topology:
        print(
            f"  shell on a node: sudo nslab shell {spec.name} h1;   status: sudo nslab status {spec.name}"
        )
        if glab.engine is not None and glab.engine.controller_log:
            print(f"  controller log:  {glab.engine.controller_log}")
    for n in glab.procs:
        port = f", port {glab.ports[n]}" if n in glab.ports else ""
        print(f"  service {n}: log {logs / (n + '.log')}{port}")
    print(f"  check it:        sudo nslab check {spec.id} --submission {sub}")
    print(f"  stop it:         sudo nslab lab stop {spec.id}")
    return 0


def _stop(spec: LabSpec) -> int:
    state_file = STATE_DIR / f"{spec.id}.json"
    if not state_file.exists():
        raise NslabError(f"lab {spec.id} is not running (no {state_file})")
    state = json.loads(state_file.read_text())
    for rec in state.get("services", {}).values():
        pid, start = (rec["pid"], rec.get("start")) if isinstance(rec, dict) else (rec, None)
        if start is not None and proc_start_time(pid) == start:  # still ours, not a reused pid
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    # The lab's cgroup owns every process it started: the grader's services too.
    cgroup.kill(state["instance"])
    sandbox.kill_user_processes(state["user"])
    if spec.topology:
        from nslab.engine import Lab

        try:
            Lab.attach(state["instance"]).down()
        except NslabError as exc:
            print(f"note: {exc}")
    sandbox.remove_workdir(state["workdir"])
    state_file.unlink()
    print(f"lab {spec.id} stopped")
    return 0
