"""One way to start a process for a lab and wait until it is ready.

    p = process.start(lab.command(node, argv), what="pod p1", log=path,
                      cgroup=("ls0", "services"), ready=process.Ready(port=8000))
    ...
    p.stop()

The process runs in its own session (so `stop` ends its whole group), in the
lab's cgroup when one is named (the owner: teardown kills the cgroup whatever
the process did), with its output in a log file — never a pipe nobody reads.
Readiness is a TCP port that a socket of the process (or of its children)
listens on, a log line matching a regex, or a probe function, with a deadline;
when the process exits first or the deadline passes, it is stopped and
ProcessStartError quotes the log's last lines. Which user and which sandbox
the process runs as is part of `argv` (nslab.grading.sandbox.wrapper_argv).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nslab.errors import NslabError
from nslab.wait import WaitTimeout, wait_until


class ProcessStartError(NslabError):
    """A process exited, or was not ready in time, while starting."""


@dataclass
class Ready:
    """When a started process counts as ready (all given conditions hold)."""

    port: int | None = None  # a TCP port one of its sockets listens on
    log: str | None = None  # a regex that a line of its log matches
    probe: Callable[[], bool] | None = None  # anything else, e.g. a file that appears
    timeout: float = 30.0


def interrupt_on_signals(*sigs: int) -> None:
    """Make SIGTERM and SIGHUP (or `sigs`) stop this program as Ctrl-C does,
    with KeyboardInterrupt, so that its `finally:` blocks and fixture
    teardowns run and what it created (network namespaces, processes) is
    removed. By default SIGTERM (`timeout`, a CI runner) ends Python at once:
    benchmarks killed that way left hundreds of namespaces behind."""

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in sigs or (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def log_tail(path: Path | str, n: int = 15) -> str:
    """The last `n` lines of a log (read from its end: logs can be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8000))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return ""


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a sandboxed program runs a few execs down)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [
                    int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                ]
        except (OSError, ValueError):
            pass
    return out


def _listen_inodes(pid: int, port: int) -> set[str]:
    """Inodes of LISTEN sockets on `port` in the network namespace of `pid`."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def listening(pid: int, port: int, owned: bool = True) -> bool:
    """Whether a socket listens on TCP `port` in the network namespace of
    `pid`, read from /proc (no process per poll, no connection opened).
    `owned`: the socket must belong to `pid` or its descendants, so that a
    port someone else took is never mistaken for ours."""
    inodes = _listen_inodes(pid, port)
    if not inodes or not owned:
        return bool(inodes)
    for p in tree(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


class Process:
    """A started process, its log, and how to stop it."""

    def __init__(self, popen: subprocess.Popen, what: str, log: Path):
        self.popen, self.what, self.log = popen, what, Path(log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def log_tail(self, n: int = 15) -> str:
        return log_tail(self.log, n)

    def stop(self, kill: bool = False, timeout: float = 5.0) -> None:
        """End its process group: SIGTERM (or SIGKILL), then SIGKILL after `timeout`."""
        for sig in ([] if kill else [signal.SIGTERM]) + [signal.SIGKILL]:
            if self.popen.poll() is not None:
                break
            try:
                os.killpg(self.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                continue

    def wait_ready(self, ready: Ready) -> None:
        """Block until `ready` holds; stop the process and raise if it exits
        first or the deadline passes."""
        pattern = re.compile(ready.log) if ready.log else None
        wanted = [
            *([f"TCP port {ready.port} to listen"] if ready.port else []),
            *([f"a log line matching {ready.log!r}"] if ready.log else []),
            *(["its readiness probe"] if ready.probe else []),
        ]
        if not wanted:
            return

        def ok() -> bool:
            if self.popen.poll() is not None:
                raise ProcessStartError(
                    f"{self.what} exited with status {self.popen.returncode} before it was "
                    f"ready; its last output ({self.log}):\n{self.log_tail()}"
                )
            return bool(
                (not ready.port or listening(self.pid, ready.port))
                and (not pattern or pattern.search(self.log_tail(200)))
                and (not ready.probe or ready.probe())
            )

        try:
            wait_until(ok, ready.timeout, interval=0.05, what=" and ".join(wanted))
        except WaitTimeout:
            self.stop(kill=True)
            raise ProcessStartError(
                f"{self.what} was not ready after {ready.timeout:g} s (waited for "
                f"{' and '.join(wanted)}); its last output ({self.log}):\n{self.log_tail()}"
            ) from None
        except ProcessStartError:
            self.stop(kill=True)
            raise


def start(
    argv: list[str],
    *,
    what: str,
    log: Path | str,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    cgroup: tuple[str, str] | None = None,
    ready: Ready | None = None,
    append: bool = False,
) -> Process:
    """Start `argv` (already prefixed for its node and sandbox) in its own
    session, in the cgroup `(lab, role)` when given, output to `log`; wait for
    `ready`. `env` is the whole environment (default: this process's)."""
    from nslab import cgroup as cg

    preexec = cg.joiner(*cgroup) if cgroup and cg.available() else None
    with open(log, "ab" if append else "wb") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )
    proc = Process(popen, what, Path(log))
    if ready is not None:
        proc.wait_ready(ready)
    return proc
