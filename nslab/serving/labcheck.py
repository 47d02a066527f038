"""What the checks of labs 3 and 4 share. The grader owns everything it
measures: the pods, the dispatcher and the load generator are the grader's
processes (root, outside the sandbox), and so is the simulated device
timing. The student's policy runs in a sandboxed process of its own
(`lab.student_command`, nslab.policy.runner), which those components consult
over the policy protocol (nslab.policy) through a Unix socket in a
directory bound into the sandbox. Probes run here, in the grader's
interpreter, and reach student code only through that protocol."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nslab.serving import local, metrics, models
from nslab.serving.pod import command as pod_command


@contextlib.contextmanager
def readable_repo() -> Iterator[Path]:
    """The built-in models in a fresh directory any user can read (removed after)."""
    path = Path(tempfile.mkdtemp(prefix="nslab-models-"))
    try:
        for name in models.BUILTIN:
            models.ensure(name, path)
        for d, _dirs, files in os.walk(path):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def policy_dir(lab: Any) -> Iterator[Path]:
    """A directory for one policy socket: the grader's (root), bound into the
    student's sandbox; only the student's group may enter it, so no other
    submission graded beside this one can reach the socket. Removed after."""
    path = Path(tempfile.mkdtemp(prefix="nslab-policy-"))
    try:
        os.chown(path, 0, pwd.getpwnam(lab.user).pw_gid)
        os.chmod(path, 0o710)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class StudentPolicy:
    """The student's policy class, answering the policy protocol in the sandbox."""

    def __init__(self, lab: Any, spec: str, sock: Path, name: str = "policy"):
        self.lab, self.spec, self.sock = lab, spec, sock
        self.log_path = Path(lab.logs_dir) / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> StudentPolicy:
        argv = [sys.executable, "-m", "nslab.policy.runner", "--connect", str(self.sock), self.spec]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.lab.student_command(argv, binds=[str(self.sock.parent)]),
                env=self.lab.student_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 12) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """End it and everything the student started (forked children too)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.lab.kill_student()


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return metrics.parse(r.read().decode())


def policy_counts(url: str) -> dict[str, int]:
    """How a component's decisions went (nslab_policy_decisions_total by outcome)."""
    m = scrape(url)
    return {lab["outcome"]: int(v) for lab, v in m.get("nslab_policy_decisions_total", [])}


def fallbacks(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k != "ok")


def tolerated(counts: dict[str, int]) -> int:
    """Fallbacks a measurement may hold and still be the policy's: 1 %, at least 3."""
    return max(3, sum(counts.values()) // 100)


def measured_on_time(
    measure: Callable[[], Any], attempts: int = 2, ready: Callable[[], bool] | None = None
) -> Any:
    """`measure()` (a load result with `policy_counts`), measured again when the
    only fallbacks past the tolerance were late answers: lateness can be the
    machine's doing (the policy's process descheduled by other work), and a
    second run tells a stall from a slow policy, which is late again. Invalid
    or failing answers are the policy's own: never measured again. `ready()`
    is asked before measuring again; False (the late run's backlog has not
    drained, which a slow policy causes) keeps the earlier run. The result
    says how many runs it took (`attempts`) and why it was not measured again
    (`not_again`)."""
    for i in range(1, attempts + 1):
        r = measure()
        c = r.policy_counts
        r.attempts = i
        r.not_again = ""
        own = fallbacks(c) - c.get("late", 0) - c.get("absent", 0)
        if fallbacks(c) <= tolerated(c) or own > tolerated(c) or not c.get("late"):
            return r
        if i < attempts and ready is not None and not ready():
            r.not_again = "the late run's backlog had not drained"
            return r
    return r


def note_attempts(record, r: Any, who: str) -> None:
    if getattr(r, "attempts", 1) > 1:
        record.note(
            f"{who}measured {r.attempts} times: an earlier run had answers after the "
            "deadline (a busy machine, or your policy); the last run counts"
        )
    elif getattr(r, "not_again", ""):
        record.note(
            f"{who}not measured again after answers past the deadline: "
            f"{r.not_again}, as when your policy answers late"
        )


def wait_policy(url: str, policy: StudentPolicy, timeout_s: float = 30.0) -> None:
    """Wait until the component at `url` reports the student's policy connected."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metrics.value(scrape(url), "nslab_policy_connected") >= 1:
            return
        if not policy.alive():
            break
        time.sleep(0.1)
    raise AssertionError(
        f"your policy {policy.spec} did not start answering; its last output:\n{policy.log_tail()}"
    )


def served_per_pod(pods: dict[str, str]) -> dict[str, int]:
    """Inference requests each pod answered, from the pods' own metrics."""
    out = {}
    for name, url in pods.items():
        try:
            out[name] = int(metrics.value(scrape(url), "nslab_requests_total"))
        except OSError:
            out[name] = 0
    return out


def grader_pods(repo: Path, *cfgs: dict[str, Any]) -> list[local.Proc]:
    """The grader's pods (root, no student code in them), on 127.0.0.1."""
    launched = [
        local._launch(pod_command({"host": "127.0.0.1", "port": 0, "repo": str(repo), **c}))
        for c in cfgs
    ]
    out = []
    try:
        for p, c in zip(launched, cfgs, strict=True):
            out.append(local._wait_ready(p, f"pod {c.get('name', '')}"))
    except BaseException:
        for p in launched:
            local.Proc(p).stop(sig_kill=True)
        raise
    return out


def ask_policy(
    lab: Any,
    spec: str,
    kind: str,
    params: dict[str, Any],
    decision: type,
    states: list[dict[str, Any]],
    check: Callable[[dict, Any], str | None] | None = None,
    deadline_s: float = 0.25,  # 5x a component's default: a probe asks few questions
) -> tuple[list[Any], dict[str, int], dict[str, Any], str]:
    """Probe the student's policy from here: start it sandboxed, ask it `states`
    over the protocol, return (decisions, None where it gave no valid one;
    counts by outcome; the info it declared when ready; its last output)."""
    from nslab.policy.protocol import PolicyLink

    async def run(sock: Path, student: StudentPolicy) -> tuple[list[Any], dict, dict]:
        link = PolicyLink(str(sock), kind, params, decision, lambda s: None, check, deadline_s)
        await link.start()
        try:
            student.start()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(link.ready.wait(), 30)
            return [await link.ask(s) for s in states], dict(link.counts), link.info
        finally:
            await link.stop()

    with policy_dir(lab) as d:
        student = StudentPolicy(lab, spec, d / "policy.sock", "probe")
        try:
            got, counts, info = asyncio.run(run(d / "policy.sock", student))
        finally:
            student.stop()
    return got, counts, info, student.log_tail()
