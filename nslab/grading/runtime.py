"""A lab brought up for grading: the topology (through the engine) with the
student's controller app, plus the lab's services, all student code running
sandboxed. Checks see it as the `lab` fixture."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from nslab.errors import NslabError
from nslab.grading import container_service, sandbox
from nslab.labs import LabSpec, Service, Variant
from nslab.measure.iperf import free_port


class LabStartError(NslabError):
    """The lab could not be brought up with this submission."""


def _tail(path: Path, n: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4000))
            lines = f.read().decode("utf-8", "replace").splitlines()[-n:]
        return "\n".join(lines)
    except OSError:
        return ""


class GradedLab:
    """The running lab handed to checks. Everything an engine `Lab` offers
    (exec, popen, ip, ifname, bridge, ofport, topology, ...) is available
    directly; node None means the grading host's root namespace."""

    def __init__(
        self,
        spec: LabSpec,
        submission: Path,
        user: str,
        limits: sandbox.Limits,
        instance: str,
        logs_dir: Path,
        variant: Variant | None = None,
    ):
        self.spec, self.submission, self.user, self.limits = spec, Path(submission), user, limits
        self.instance, self.logs_dir, self.variant = instance, Path(logs_dir), variant
        self.params = dict(variant.params if variant else spec.params)
        self.engine: Any = None
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, TextIO] = {}

    # -- life cycle -------------------------------------------------------
    def start(self) -> GradedLab:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        missing = [f for f in self.spec.submit if not self._exists(f)]
        if missing:
            raise LabStartError(
                f"the submission lacks {', '.join(missing)} (lab.yaml `submit:` lists the files to hand in)"
            )
        try:
            if self.spec.topology:
                self._start_engine()
            for svc in self.spec.services:
                self._start_service(svc)
        except BaseException:
            self.stop()
            raise
        return self

    def _exists(self, rel: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.submission / rel).st_mode)
        except OSError:
            return False

    def _start_engine(self) -> None:
        from nslab.engine import up  # the engine is only needed by labs with a network

        ctrl = str(self.submission / self.spec.controller) if self.spec.controller else None
        for attempt in (1, 2):
            try:
                self._up(up, ctrl)
                return
            except LabStartError:
                # One retry: a bring-up that failed for the host's sake (load, a
                # colleague's cleanup) must not cost points; a broken submission
                # fails twice, deterministically.
                if attempt == 2:
                    raise
                sandbox.kill_user_processes(self.user)
                time.sleep(1)

    def _up(self, up: Any, ctrl: str | None) -> None:
        try:
            self.engine = up(
                self.spec.topology_path,
                params=self.params,
                name=self.instance,
                controller=ctrl,
                controller_user=self.user if ctrl else None,
                controller_preexec=(
                    sandbox.demote(
                        self.user, self.limits, cwd=str(self.submission), new_session=False
                    )
                    if ctrl
                    else None
                ),
            )
        except NslabError as exc:
            log = ""
            state_log = Path("/run/nslab") / self.instance / "controller.log"
            if state_log.exists():
                log = "\nlast lines of the controller's log:\n" + _tail(state_log)
            raise LabStartError(f"the lab did not come up: {exc}{log}") from None

    def _start_service(self, svc: Service) -> None:
        env = sandbox.student_env(str(self.submission), svc.env)
        # the engine's label: its teardown finds whatever runs in the lab
        env["NSLAB_LAB"] = self.instance
        # {python}: the grader's interpreter, which has nslab (e.g. the NF toolkit)
        fmt = {"submission": str(self.submission), "python": sys.executable}
        if svc.port:
            self.ports[svc.name] = free_port()
            env["PORT"] = str(self.ports[svc.name])
            fmt["port"] = str(self.ports[svc.name])
        if isinstance(svc.command, str):
            argv = ["sh", "-c", svc.command.format(**fmt)]
        else:
            argv = [a.format(**fmt) for a in svc.command]
        log = open(self.logs_dir / f"{svc.name}.log", "w")  # noqa: SIM115 - closed in stop()
        self._logs[svc.name] = log
        kw: dict[str, Any] = dict(
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        if svc.user != "grader" and container_service.in_container(self, svc.node):
            # Hook (NF containers, lab 1): student code on a container node runs
            # inside that container; see nslab/grading/container_service.py.
            proc = container_service.start(self, svc, log)
        elif svc.user == "grader":
            # Trusted lab code as root: never from the student's dir (python -m would
            # put it first on sys.path, and a student's module would run as root).
            # NSLAB_LAB: the lab's label, so that the engine's teardown and
            # `nslab down --all` find these root services too.
            env = dict(os.environ, PYTHONSAFEPATH="1", **svc.env, NSLAB_LAB=self.instance)
            kw.update(cwd=str(self.spec.path), start_new_session=True, env=env)
            proc = self.popen(svc.node, argv, **kw)
        elif svc.node is None and not svc.caps:
            kw["preexec_fn"] = sandbox.demote(self.user, self.limits, cwd=str(self.submission))
            proc = subprocess.Popen(argv, **kw)
        else:  # enter the node's namespace as root, then drop privileges
            wrap = [sys.executable, "-m", "nslab.grading.sandbox", "--user", self.user]
            wrap += [
                "--limits",
                json.dumps(self.limits.as_dict()),
                "--cwd",
                str(self.submission),
            ]
            if svc.caps:
                wrap += ["--caps", ",".join(svc.caps)]
            wrap.append("--")
            if svc.node is None:
                proc = subprocess.Popen(wrap + argv, start_new_session=True, **kw)
            else:
                proc = self.popen(svc.node, wrap + argv, start_new_session=True, **kw)
        self.procs[svc.name] = proc
        self._wait_ready(svc, proc)

    def _wait_ready(self, svc: Service, proc: subprocess.Popen) -> None:
        r = svc.ready
        end = time.monotonic() + r.timeout
        wanted = []
        if r.port:
            wanted.append(f"TCP port {self.ports[svc.name]} to accept connections")
        if r.file:
            wanted.append(f"file {r.file} to appear")
        if r.log:
            wanted.append(f"a log line matching {r.log!r}")
        while wanted:
            if proc.poll() is not None:
                raise LabStartError(
                    f"service '{svc.name}' exited with code {proc.returncode} before it was ready; "
                    f"its last output:\n{self.log(svc.name)}"
                )
            ok = True
            if r.port:
                ok &= self._port_open(svc.node, self.ports[svc.name])
            if r.file:
                ok &= self._exists(r.file) and os.lstat(self.submission / r.file).st_size > 0
            if r.log:
                ok &= re.search(r.log, self.log(svc.name, 200)) is not None
            if ok:
                break
            if time.monotonic() > end:
                raise LabStartError(
                    f"service '{svc.name}' was not ready after {r.timeout:g} s "
                    f"(waited for {' and '.join(wanted)}); its last output:\n{self.log(svc.name)}"
                )
            time.sleep(0.1)
        if r.delay:
            time.sleep(r.delay)

    def _port_open(self, node: str | None, port: int) -> bool:
        if node is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False
        from nslab.measure.probe import tcp_connect

        return tcp_connect(self, node, "127.0.0.1", port, timeout_s=0.5).ok

    def stop(self) -> None:
        """Stop services, kill every process of the student user, take the
        topology down. Safe to call twice and after a failed start."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        sandbox.kill_user_processes(self.user)
        for f in self._logs.values():
            f.close()
        self._logs.clear()
        if self.engine is not None:
            try:
                log = self.engine.controller_log
                if (
                    log is not None and Path(log).is_file()
                ):  # the student's app's output, for the TA
                    shutil.copyfile(log, self.logs_dir / "controller.log")
            except OSError:
                pass
            try:
                self.engine.down()
            finally:
                self.engine = None

    # -- what checks use --------------------------------------------------
    def student_command(
        self,
        argv: list[str],
        *,
        caps: tuple[str, ...] | list[str] = (),
        binds: tuple[str, ...] | list[str] = (),
        role: str = "student",
    ) -> list[str]:
        """`argv` wrapped so that it runs as sandboxed student code: the slot's
        user, the lab's limits, its own cgroup (`role`) and file-system view
        (the submission's work dir, a private /tmp, and the extra paths in
        `binds`, read-write). Run it with `lab.popen(node, ...)` or
        subprocess.Popen, with `lab.student_env()`. Start every piece of
        student code through this one function."""
        wrap = [sys.executable, "-m", "nslab.grading.sandbox", "--user", self.user]
        wrap += ["--limits", json.dumps(self.limits.as_dict()), "--cwd", str(self.submission)]
        if caps:
            wrap += ["--caps", ",".join(caps)]
        return [*wrap, "--", *argv]

    def kill_student(self) -> None:
        """Kill every process of this submission's student code (forked
        children included) and wait until they are gone: call it before the
        grader measures a baseline."""
        sandbox.kill_user_processes(self.user)

    def student_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of student code: nothing of the grader's leaks in."""
        return sandbox.student_env(str(self.submission), extra)

    def alive(self, service: str) -> bool:
        p = self.procs.get(service)
        return p is not None and p.poll() is None

    def log(self, service: str, lines: int = 15) -> str:
        """Last lines of a service's output (student output: data, not verdicts)."""
        return _tail(self.logs_dir / f"{service}.log", lines)

    def read_output(self, rel: str, max_bytes: int = 1 << 20) -> str | None:
        """A file the student's code wrote in its work dir, read safely: a
        regular file inside the work dir (no symlinks followed), at most
        `max_bytes`. None when it does not exist or is not a regular file."""
        path = self.submission / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"{rel}: must be a relative path inside the submission")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(max_bytes).decode("utf-8", "replace")

    def exec(
        self, node: str | None, cmd: str | list[str], timeout: float | None = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as the grader (root) in `node`'s namespace (None: host)."""
        if node is not None and self.engine is not None:
            return self.engine.exec(node, cmd, timeout=timeout, **kw)
        if node is not None:
            raise LabStartError(f"this lab has no topology, so there is no node '{node}'")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        kw.pop("user", None)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, node: str | None, cmd: str | list[str], **kw: Any) -> subprocess.Popen:
        if node is not None and self.engine is not None:
            return self.engine.popen(node, cmd, **kw)
        if node is not None:
            raise LabStartError(f"this lab has no topology, so there is no node '{node}'")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return subprocess.Popen(argv, **kw)

    def ip(self, node: str) -> str:
        """The node's first IPv4 address; a literal address passes through."""
        if re.fullmatch(r"[\d.]+", node):
            return node
        if self.engine is None:
            raise LabStartError(f"this lab has no topology, so node '{node}' has no address")
        ip = self.engine.ip(node)
        if ip is None:
            raise LabStartError(f"node '{node}' has no IPv4 address")
        return ip

    def hosts(self) -> list[str]:
        """Names of the topology's host nodes (kind linux), in file order."""
        if self.engine is None:
            return []
        return [n for n, node in self.engine.topology.nodes.items() if node.kind == "linux"]

    def switches(self) -> list[str]:
        if self.engine is None:
            return []
        return [n for n, node in self.engine.topology.nodes.items() if node.kind == "ovs-bridge"]

    def __getattr__(self, name: str) -> Any:
        # engine Lab attributes: topology, ifname, bridge, ofport, controller_log, ...
        engine = self.__dict__.get("engine")
        if engine is None:
            raise AttributeError(f"{name} (this lab has no running topology)")
        return getattr(engine, name)

    def __repr__(self) -> str:
        v = f" variant={self.variant.name}" if self.variant else ""
        return f"<GradedLab {self.spec.id} as {self.instance}{v} params={self.params}>"
