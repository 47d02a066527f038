"""What the checks of labs 3 and 4 share: a model repository the sandboxed
student user can read, and pods / dispatchers that load student code and
therefore run as that user, with the lab's limits (nslab.grading.sandbox).
The grader's own load generator (nslab.serving.load) runs in the check."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nslab.serving import local, models
from nslab.serving.pod import command as pod_command

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _sandbox(lab: Any, repo: Path) -> tuple[dict[str, str], Any]:
    from nslab.grading import sandbox

    env = sandbox.student_env(
        str(lab.submission),
        {"PYTHONPATH": str(REPO_ROOT), "NSLAB_MODEL_REPO": str(repo)},
    )
    return env, sandbox.demote(lab.user, lab.limits, cwd=str(lab.submission))


class Procs:
    """Processes a check started; stop() ends each by its pid."""

    def __init__(self) -> None:
        self.procs: list[local.Proc] = []

    def add(self, p: local.Proc) -> local.Proc:
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            p.stop(sig_kill=True)
        self.procs.clear()


def student_pod(lab: Any, repo: Path, cfg: dict[str, Any], what: str = "your pod") -> local.Proc:
    """A pod with the student's config/policy, as the student user, on 127.0.0.1."""
    env, pre = _sandbox(lab, repo)
    cfg = {"host": "127.0.0.1", "port": 0, "repo": str(repo), **cfg}
    return local._wait_ready(local._launch(pod_command(cfg), env, pre), what)


def student_dispatcher(
    lab: Any, repo: Path, pods: list[tuple[str, str]], policy: str, what: str = "dispatcher"
) -> local.Proc:
    """A dispatcher running the student's policy file, as the student user."""
    env, pre = _sandbox(lab, repo)
    return local._wait_ready(local._launch(local.dispatcher_command(pods, policy), env, pre), what)


def grader_pods(repo: Path, *cfgs: dict[str, Any]) -> list[local.Proc]:
    """Pods with no student code (the lab's fixed fleet), as the grader."""
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
            local.Proc(p, 0, "pod").stop(sig_kill=True)
        raise
    return out


def student_python(lab: Any, repo: Path, code: str, timeout_s: float = 30.0) -> Any:
    """Run grader-written `code` that imports student files, as the student user;
    the code prints one JSON value on its last line, which is returned."""
    import json
    import subprocess
    import sys

    env, pre = _sandbox(lab, repo)
    try:
        p = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            preexec_fn=pre,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"your code did not finish within {timeout_s:g} s") from exc
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        err = "\n".join(p.stderr.strip().splitlines()[-8:])
        raise AssertionError(f"your code failed (exit {p.returncode}):\n{err}")
    return json.loads(lines[-1])
