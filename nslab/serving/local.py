"""Pods and dispatchers as local processes on loopback: for tests, benchmarks,
graders and students trying things without a topology. Each process is ours
alone (we keep its Popen) and is stopped by pid; nothing is killed by name."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from nslab import process
from nslab.errors import NslabError
from nslab.process import Process
from nslab.serving.pod import command as pod_command
from nslab.wait import WaitTimeout, wait_until

_READY = re.compile(r"^READY (\d+)", re.M)


class Proc:
    """A pod or dispatcher we started (nslab.process), and where it serves."""

    def __init__(self, process: Process, port: int = 0):
        self.process, self.port, self.what = process, port, process.what
        self.url = f"http://127.0.0.1:{port}"

    @property
    def popen(self) -> subprocess.Popen:
        return self.process.popen

    @property
    def log_path(self) -> str:
        return str(self.process.log)

    def log_tail(self, n: int = 15) -> str:
        """The last lines the process printed (stdout and stderr)."""
        return self.process.log_tail(n)

    def stop(self, sig_kill: bool = False) -> None:
        self.process.stop(kill=sig_kill)
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


def _launch(cmd: list[str], env: dict | None = None, what: str = "") -> Process:
    """Started, not yet ready. Output goes to a log file, never to a pipe: a
    pipe nobody reads fills up (asyncio warnings, a print) and blocks it."""
    fd, log = tempfile.mkstemp(prefix="nslab-serving-", suffix=".log")
    os.close(fd)
    try:
        return process.start(cmd, what=what or cmd[-1], log=log, env={**os.environ, **(env or {})})
    except BaseException:
        os.unlink(log)
        raise


def _wait_ready(p: Process, what: str | None = None, timeout_s: float = 60.0) -> Proc:
    """Until it prints `READY <port>` (it may have asked for any free port)."""
    if what:
        p.what = what
    try:
        p.wait_ready(process.Ready(log=_READY.pattern, timeout=timeout_s))
    except process.ProcessStartError as exc:
        with contextlib.suppress(OSError):
            os.unlink(p.log)
        raise NslabError(str(exc)) from None
    port = int(_READY.search(p.log_tail(200)).group(1))  # type: ignore[union-attr]
    return Proc(p, port)


def _start(cmd: list[str], what: str, timeout_s: float = 60.0) -> Proc:
    return _wait_ready(_launch(cmd, what=what), what, timeout_s)


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
    launched: list[tuple[Process, str]] = []
    started: list[Proc] = []
    try:
        for cfg in cfgs:
            cfg = {"host": "127.0.0.1", "port": 0, **cfg}
            launched.append(
                (_launch(pod_command(cfg)), f"pod {cfg.get('name') or cfg.get('model')}")
            )
        for p, what in launched:
            started.append(_wait_ready(p, what))
        yield started
    finally:
        for p, _what in launched:
            Proc(p).stop()


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
