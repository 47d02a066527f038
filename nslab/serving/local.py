"""Pods and dispatchers as local processes on loopback: for tests, benchmarks,
graders and students trying things without a topology. Each process is ours
alone (we keep its Popen) and is stopped by pid; nothing is killed by name."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from nslab.errors import NslabError
from nslab.serving.pod import command as pod_command
from nslab.wait import WaitTimeout, wait_until


class Proc:
    def __init__(self, popen: subprocess.Popen, port: int, what: str):
        self.popen, self.port, self.what = popen, port, what
        self.url = f"http://127.0.0.1:{port}"

    @property
    def log_path(self) -> str | None:
        return getattr(self.popen, "nslab_log", None)

    def log_tail(self, n: int = 15) -> str:
        """The last lines the process printed (stdout and stderr)."""
        try:
            with open(self.log_path or "", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8000))
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig_kill: bool = False) -> None:
        if self.popen.poll() is None:
            if sig_kill:
                self.popen.kill()
            else:
                self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.log_path:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)


def _launch(
    cmd: list[str], env: dict | None = None, preexec_fn: Callable[[], None] | None = None
) -> subprocess.Popen:
    """env: the whole environment when preexec_fn is given (a sandbox), else additions.
    Output goes to a log file, never to a pipe: a pipe nobody reads fills up
    (asyncio warnings, a student's print) and then blocks the process."""
    fd, log = tempfile.mkstemp(prefix="nslab-serving-", suffix=".log")
    try:
        p = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            env=env if preexec_fn else {**os.environ, **(env or {})},
            start_new_session=preexec_fn is None,
            preexec_fn=preexec_fn,
        )
    except BaseException:
        os.unlink(log)
        raise
    finally:
        os.close(fd)
    p.nslab_log = log  # type: ignore[attr-defined]
    return p


def _wait_ready(p: subprocess.Popen, what: str, timeout_s: float = 60.0) -> Proc:
    proc = Proc(p, 0, what)

    def ready_port() -> int | None:
        with open(proc.log_path or "", errors="replace") as f:
            for line in f:
                if line.startswith("READY "):
                    return int(line.split()[1])
        if p.poll() is not None:
            err = proc.log_tail()
            proc.stop()
            raise NslabError(f"{what} exited with code {p.returncode} before ready:\n{err.strip()}")
        return None

    try:
        proc.port = wait_until(ready_port, timeout_s, what=f"{what} to print READY")
    except WaitTimeout:
        err = proc.log_tail()
        proc.stop(sig_kill=True)
        raise NslabError(f"{what} not ready within {timeout_s:.0f} s; its output:\n{err}") from None
    proc.url = f"http://127.0.0.1:{proc.port}"
    return proc


def _start(cmd: list[str], what: str, timeout_s: float = 60.0) -> Proc:
    return _wait_ready(_launch(cmd), what, timeout_s)


def start_pod(cfg: dict[str, Any], timeout_s: float = 60.0) -> Proc:
    """A pod process on 127.0.0.1 (port 0 = any free one unless cfg says)."""
    cfg = {"host": "127.0.0.1", "port": 0, **cfg}
    return _start(pod_command(cfg), f"pod {cfg.get('name') or cfg.get('model', '')}", timeout_s)


def dispatcher_command(
    pods: list[tuple[str, str]], policy: str = "round-robin", **kw: Any
) -> list[str]:
    cfg = {
        "pods": [{"name": n, "url": u} for n, u in pods],
        "policy": policy,
        "host": "127.0.0.1",
        "port": 0,
        **kw,
    }
    return [sys.executable, "-m", "nslab.serving.dispatcher", "--config", json.dumps(cfg)]


def start_dispatcher(pods: list[tuple[str, str]], policy: str = "round-robin", **kw: Any) -> Proc:
    return _start(dispatcher_command(pods, policy, **kw), f"dispatcher ({policy})")


@contextlib.contextmanager
def pods(*cfgs: dict[str, Any]) -> Iterator[list[Proc]]:
    """Start pods (launched together: each pays Python's start-up), stop them on exit."""
    launched: list[tuple[subprocess.Popen, str]] = []
    started: list[Proc] = []
    try:
        for cfg in cfgs:
            cfg = {"host": "127.0.0.1", "port": 0, **cfg}
            launched.append(
                (_launch(pod_command(cfg)), f"pod {cfg.get('name') or cfg.get('model')}")
            )
        for popen, what in launched:
            started.append(_wait_ready(popen, what))
        yield started
    finally:
        for popen, what in launched:
            Proc(popen, 0, what).stop()


def wait_idle(urls: list[str], timeout_s: float = 30.0) -> bool:
    """Wait until every pod has no request queued or in flight (e.g. the backlog
    of an earlier overloaded run, which the pods still serve after its clients
    left). True when idle, False after the timeout."""
    import urllib.request

    from nslab.serving import metrics

    pending = list(urls)

    def idle() -> bool:
        still = []
        for u in pending:
            try:
                with urllib.request.urlopen(u + "/metrics", timeout=2) as r:
                    m = metrics.parse(r.read().decode())
            except OSError:
                continue  # a dead pod is idle
            busy = metrics.value(m, "nslab_queue_length") + metrics.value(
                m, "nslab_inflight_requests"
            )
            if busy > 0:
                still.append(u)
        pending[:] = still
        return not pending

    try:
        return wait_until(idle, timeout_s, interval=0.1, what="every pod to be idle")
    except WaitTimeout:
        return False
