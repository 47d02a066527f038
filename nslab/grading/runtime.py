"""A lab brought up for grading: the topology (through the engine) with the
student's controller app, plus the lab's services, all student code running
sandboxed. Checks see it as the `lab` fixture."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nslab import process
from nslab.errors import NslabError
from nslab.grading import container_service, sandbox
from nslab.kinds import get as get_kind
from nslab.labs import LabSpec, Service, Variant
from nslab.ports import free_port


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
        self.procs: dict[str, process.Process] = {}

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
                self.kill_student()
                time.sleep(1)

    def _up(self, up: Any, ctrl: str | None) -> None:
        try:
            self.engine = up(
                self.spec.topology_path,
                params=self.params,
                name=self.instance,
                controller=ctrl,
                controller_wrap=self._controller_wrap() if ctrl else None,
            )
        except NslabError as exc:
            log = ""
            from nslab.engine.state import RUN_DIR

            state_log = RUN_DIR / self.instance / "controller.log"
            if state_log.exists():
                log = "\nlast lines of the controller's log:\n" + _tail(state_log)
            raise LabStartError(f"the lab did not come up: {exc}{log}") from None

    def _controller_wrap(self) -> list[str]:
        """The sandbox of the student's controller app: its log and the
        fabric description live in the lab's state dir, shown to it alone."""
        from nslab.engine.state import RUN_DIR

        state = RUN_DIR / self.instance
        return self.student_command(
            [], role="controller", binds=[str(state / "controller.log")],
            ro_binds=[str(state / "fabric.json")],
        )  # fmt: skip

    def _start_service(self, svc: Service) -> None:
        env = self.student_env(svc.env)
        # {python}: the kit's interpreter, which has nslab (e.g. the NF toolkit)
        fmt = {"submission": str(self.submission), "python": sys.executable}
        if svc.port:
            self.ports[svc.name] = free_port()
            env["PORT"] = str(self.ports[svc.name])
            fmt["port"] = str(self.ports[svc.name])
        if isinstance(svc.command, str):
            argv = ["sh", "-c", svc.command.format(**fmt)]
        else:
            argv = [a.format(**fmt) for a in svc.command]
        if svc.user == "grader":
            # Trusted lab code as root, in the lab's `services` cgroup; never
            # from the student's dir (python -m would put it first on sys.path).
            # NSLAB_LAB: the lab's label, its owner where there are no cgroups
            env, role, cwd = (
                dict(os.environ, PYTHONSAFEPATH="1", **svc.env, NSLAB_LAB=self.instance),
                "services",
                self.spec.path,
            )
        elif container_service.in_container(self, svc.node):
            # Hook (NF containers, lab 1): student code on a container node runs
            # inside that container, in the cgroup student_command would give it;
            # see nslab/grading/container_service.py.
            argv, env = container_service.command(self, svc)
            role, cwd = f"student/{svc.name}", None
        else:
            argv, role, cwd = self.student_command(argv, caps=svc.caps, role=svc.name), None, None
        r = svc.ready
        probe = None
        if r.file:
            probe = lambda: self._exists(r.file) and os.lstat(self.submission / r.file).st_size > 0  # noqa: E731
        try:
            proc = process.start(
                self._node_argv(svc.node, argv),
                what=f"service '{svc.name}'",
                log=self.logs_dir / f"{svc.name}.log",
                env=env,
                cwd=str(cwd) if cwd else None,
                cgroup=(self.instance, role) if role else None,
                ready=process.Ready(
                    port=self.ports.get(svc.name) if r.port else None,
                    log=r.log,
                    probe=probe,
                    timeout=r.timeout,
                ),
            )
        except process.ProcessStartError as exc:
            raise LabStartError(str(exc)) from None
        self.procs[svc.name] = proc
        if r.delay:
            time.sleep(r.delay)

    def _node_argv(self, node: str | None, argv: list[str]) -> list[str]:
        """`argv` run in `node`'s network namespace (None: the grading host)."""
        if node is None:
            return argv
        if self.engine is None:
            raise LabStartError(f"this lab has no topology, so there is no node '{node}'")
        return self.engine.command(node, argv)

    def stop(self) -> None:
        """Stop services, kill every process of the student user, take the
        topology down. Safe to call twice and after a failed start."""
        for proc in self.procs.values():
            proc.stop(kill=True)
        self.procs.clear()
        used = self.usage()
        if used:  # for the TA: logs/<variant>/usage.json
            (self.logs_dir / "usage.json").write_text(json.dumps(used, indent=1))
        self.kill_student()
        from nslab import cgroup

        if cgroup.available():
            cgroup.kill(self.instance, "services")
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
        if cgroup.available():  # the lab's group itself, whatever is left in it
            cgroup.kill(self.instance)

    # -- what checks use --------------------------------------------------
    def student_command(
        self,
        argv: list[str],
        *,
        caps: tuple[str, ...] | list[str] = (),
        binds: tuple[str, ...] | list[str] = (),
        ro_binds: tuple[str, ...] | list[str] = (),
        role: str = "code",
    ) -> list[str]:
        """`argv` wrapped so that it runs as sandboxed student code: the slot's
        user, the lab's limits, the cgroup `nslab.slice/<lab>/student/<role>`
        and a file-system view of its own (the submission's work dir, a
        private /tmp, the kit's public packages, and the extra paths in
        `binds` read-write and `ro_binds` read-only). Run it with
        `lab.popen(node, ...)` or subprocess.Popen, with `lab.student_env()`.
        Every piece of student code starts through this one function."""
        return sandbox.wrapper_argv(
            user=self.user,
            limits=self.limits,
            cwd=str(self.submission),
            cgroup=f"{self.instance}/student/{role}",
            caps=caps,
            binds=[str(b) for b in binds],
            ro_binds=[str(b) for b in ro_binds],
        ) + list(argv)

    @contextlib.contextmanager
    def student_frozen(self) -> Iterator[None]:
        """Every student process stopped (cgroup.freeze) while the grader
        measures something the submission must not disturb, e.g. a baseline."""
        from nslab import cgroup

        frozen = cgroup.exists(self.instance, "student")
        if frozen:
            cgroup.freeze(self.instance, "student", True)
        try:
            yield
        finally:
            if frozen and cgroup.exists(self.instance, "student"):
                cgroup.freeze(self.instance, "student", False)

    def usage(self) -> dict[str, float]:
        """What the submission's code used so far: peak memory (MB), CPU
        seconds, live processes (from its cgroup; empty without cgroups)."""
        from nslab import cgroup

        return cgroup.usage(self.instance, "student") if cgroup.exists(self.instance) else {}

    def kill_student(self) -> None:
        """Kill every process of this submission's student code (forked
        children included) and wait until they are gone: call it before the
        grader measures a baseline."""
        from nslab import cgroup

        if cgroup.available():
            cgroup.kill(self.instance, "student")
        sandbox.kill_user_processes(self.user)

    def student_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of student code: nothing of the grader's leaks in."""
        return sandbox.student_env(str(self.submission), extra)

    def alive(self, service: str) -> bool:
        p = self.procs.get(service)
        return p is not None and p.alive()

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
        """Names of the topology's host nodes (every host kind), in file order."""
        if self.engine is None:
            return []
        return [
            n
            for n, node in self.engine.topology.nodes.items()
            if get_kind(node.kind).role == "host"
        ]

    def switches(self) -> list[str]:
        if self.engine is None:
            return []
        return [n for n, node in self.engine.topology.nodes.items() if get_kind(node.kind).openflow]

    def __getattr__(self, name: str) -> Any:
        # engine Lab attributes: topology, ifname, bridge, ofport, controller_log, ...
        engine = self.__dict__.get("engine")
        if engine is None:
            raise AttributeError(f"{name} (this lab has no running topology)")
        return getattr(engine, name)

    def __repr__(self) -> str:
        v = f" variant={self.variant.name}" if self.variant else ""
        return f"<GradedLab {self.spec.id} as {self.instance}{v} params={self.params}>"
