"""A running lab: bring it up, reach into its nodes, bring it down.

`up()` validates and checks capabilities in the calling process (so bad input
creates nothing), then starts a detached supervisor process that builds the
lab and keeps it alive; it returns once the supervisor reports the lab ready.
Any process can then `Lab.attach(name)`.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nslab import cgroup
from nslab import host as hostcaps
from nslab.engine import teardown as td
from nslab.engine.state import LabState, lab_names
from nslab.errors import CapabilityError, NslabError
from nslab.kinds import all_kinds, by_kind
from nslab.kinds import get as get_kind
from nslab.topo.model import Topology
from nslab.topo.names import bridge_name, root_ifname

Progress = Callable[[str], None]


def _stderr_progress(msg: str) -> None:
    print(f"[nslab] {msg}", file=sys.stderr, flush=True)


class Lab:
    def __init__(self, state: LabState, topology: Topology) -> None:
        self.state = state
        self.topology = topology

    # -- finding labs -----------------------------------------------------------
    @classmethod
    def attach(cls, name: str) -> Lab:
        try:
            state = LabState.load(name)
        except FileNotFoundError:
            running = ", ".join(lab_names()) or "none"
            raise NslabError(f"no lab named '{name}' is running (running: {running})") from None
        with open(state.dir / "topology.pickle", "rb") as f:
            topo = pickle.load(f)
        return cls(state, topo)

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def state_dir(self) -> Path:
        return self.state.dir

    @property
    def controller_port(self) -> int | None:
        return self.state.controller_port

    @property
    def controller_log(self) -> Path | None:
        return self.state.dir / "controller.log" if self.state.controller_port else None

    @property
    def degraded(self) -> list[str]:
        return list(self.state.degraded)

    def alive(self) -> bool:
        sup = self.state.supervisor
        return bool(sup and sup.alive())

    # -- nodes --------------------------------------------------------------------
    def _node(self, node: str):
        try:
            return self.topology.nodes[node]
        except KeyError:
            raise NslabError(
                f"lab {self.name} has no node '{node}' (nodes: {', '.join(self.topology.nodes)})"
            ) from None

    def pid(self, node: str) -> int:
        self._node(node)
        if node not in self.state.hosts:
            raise NslabError(f"{node} is a switch: it lives in the root namespace")
        return self.state.hosts[node]

    def ns_cmd(self, node: str) -> list[str]:
        n = self._node(node)
        if get_kind(n.kind).root_namespace:
            return []
        # The node's network namespace with this host's tools (tcpdump, iperf3,
        # ...) for every kind, so observations do not depend on an image's content.
        return ["nsenter", "-t", str(self.pid(node)), "-n", "--"]

    def container_cmd(self, node: str) -> list[str] | None:
        """Prefix that runs a command inside a container node (its filesystem,
        environment and namespaces); None for namespace hosts and switches."""
        if node not in self.state.containers:
            return None
        from nslab import containers

        return containers.exec_cmd(self.name, node)

    def command(self, node: str, cmd: str | list[str], user: str | None = None) -> list[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        return self.ns_cmd(node) + argv

    def env(self) -> dict[str, str]:
        # The label lets teardown find whatever runs in the lab, and only that.
        # The kit's own bin directory comes first on PATH, so that `nslab`,
        # `python` and friends inside a node are the kit's even under plain sudo.
        kit_bin = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        if kit_bin not in path.split(":"):
            path = f"{kit_bin}:{path}"
        return {**os.environ, "PATH": path, "NSLAB_LAB": self.name}

    def exec(
        self,
        node: str,
        cmd: str | list[str],
        timeout: float | None = None,
        check: bool = False,
        input: str | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            self.command(node, cmd, user),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=self.env(),
            preexec_fn=self._joiner(),
        )
        if check and r.returncode != 0:
            raise NslabError(f"{node}: `{cmd}` exited {r.returncode}: {r.stderr.strip()[-500:]}")
        return r

    def popen(
        self, node: str, cmd: str | list[str], user: str | None = None, **kwargs
    ) -> subprocess.Popen:
        kwargs.setdefault("env", self.env())
        own = self._joiner()
        if own is not None:
            theirs = kwargs.pop("preexec_fn", None)
            kwargs["preexec_fn"] = own if theirs is None else _chain(own, theirs)
        return subprocess.Popen(self.command(node, cmd, user), **kwargs)

    def _joiner(self):
        """Processes started in the lab belong to its `exec` cgroup (a
        preexec function may move them on, e.g. into a student group)."""
        return cgroup.joiner(self.name, "exec") if cgroup.available() else None

    def ip(self, node: str) -> str | None:
        ip = self._node(node).ip
        return str(ip.ip) if ip else None

    def ifname(self, node: str, iface: str) -> str:
        n = self._node(node)
        return root_ifname(self.name, node, iface) if get_kind(n.kind).root_namespace else iface

    def bridge(self, node: str) -> str:
        self._node(node)
        return bridge_name(self.name, node)

    def ofport(self, node: str, iface: str) -> int:
        return self.state.ofports[node][iface]

    # -- lifecycle ------------------------------------------------------------------
    def down(self, progress: Progress = lambda m: None, timeout: float = 120) -> None:
        """Stop the supervisor (it tears down); clean up from state if it cannot."""
        sup = self.state.supervisor
        if sup and sup.alive():
            try:
                os.kill(sup.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while sup.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if sup.alive():
                os.kill(sup.pid, signal.SIGKILL)
        if self.state.dir.exists():
            try:
                self.state = LabState.load(self.name)
            except (FileNotFoundError, ValueError):
                pass
            td.teardown(self.state, progress)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def _chain(*fns: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for f in fns:
            f()

    return run


def check_capabilities(topo: Topology, allow_degraded: bool) -> list[str]:
    """Fail (or, when allowed, record) what the topology needs and the host lacks."""
    problems = []
    needs_netem = [link for link in topo.links if link.params.needs_netem()]
    if needs_netem and not hostcaps.has_netem():
        for link in needs_netem:
            problems.append(
                f"link {link} ({link.origin}) asks for delay/jitter/loss: "
                "this kernel has no sch_netem"
            )
    shaped = [link for link in topo.links if link.params.bw is not None]
    if shaped and not hostcaps.has_htb():
        problems += [f"link {link} asks for bw: this kernel has no sch_htb" for link in shaped]
    if problems and not allow_degraded:
        raise CapabilityError(
            "\n".join(problems) + "\nrun with --allow-degraded to bring the lab "
            "up without them (checks that need them will be skipped)"
        )
    return problems


def prepare_kinds(topo: Topology, progress: Progress) -> None:
    """Each kind checks what the host must offer its nodes, and gets ready
    (e.g. builds an image), before anything is created."""
    for kind, nodes in by_kind(topo):
        kind.prepare(nodes, progress)


def up(
    topology: str | Topology,
    params: dict | None = None,
    name: str | None = None,
    controller: str | None = None,
    controller_wrap: list[str] | None = None,
    allow_degraded: bool = False,
    progress: Progress | None = _stderr_progress,
) -> Lab:
    if not isinstance(topology, Topology):
        from nslab.topo import load

    progress = progress or (lambda m: None)
    if os.geteuid() != 0:
        raise NslabError("bringing up a lab needs root: run with sudo")
    topo = (
        topology if isinstance(topology, Topology) else load(topology, params or {}, lab_name=name)
    )
    name = name or topo.name
    if name in lab_names():
        old = Lab.attach(name)
        if old.alive():
            raise NslabError(
                f"a lab named '{name}' is already running: `nslab down {name}` "
                "first, or choose another --name"
            )
        progress(f"cleaning up what a crashed lab '{name}' left behind")
        old.down(progress)
    degraded = check_capabilities(topo, allow_degraded)
    prepare_kinds(topo, progress)
    state = LabState(name=name, topology=topo.source, params=dict(topo.params), degraded=degraded)
    state.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state.dir, 0o755)
    with open(state.dir / "topology.pickle", "wb") as f:
        pickle.dump(topo, f)
    request = {
        # controller_wrap: an argv prefix the app runs under (the grader's sandbox)
        "controller": {"app": controller, "wrap": controller_wrap}
        if (controller or controller_wrap)
        else None
    }
    with open(state.dir / "request.pickle", "wb") as f:
        pickle.dump(request, f)
    state.save()
    return _spawn_supervisor(state, topo, progress)


def _spawn_supervisor(state: LabState, topo: Topology, progress: Progress) -> Lab:
    rfd, wfd = os.pipe()
    log = open(state.dir / "supervisor.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nslab.engine.supervisor", state.name, str(wfd)],
        pass_fds=(wfd,),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env={**os.environ, "NSLAB_LAB": state.name},
        # The lab's cgroup owns the supervisor and all it starts (hosts,
        # controller, services): teardown kills the cgroup.
        preexec_fn=cgroup.joiner(state.name, "supervisor") if cgroup.available() else None,
    )
    os.close(wfd)
    log.close()
    ok, error = False, ""
    try:
        with os.fdopen(rfd) as pipe:
            for line in pipe:
                kind, _, msg = line.rstrip("\n").partition(" ")
                if kind == "P":
                    progress(msg)
                elif kind == "READY":
                    ok = True
                    break
                elif kind == "ERROR":
                    error = msg.replace("\\n", "\n")
                    break
    except KeyboardInterrupt:
        progress("interrupted: tearing down")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        raise
    if not ok:
        proc.wait(timeout=120)
        if not error:
            tail = (state.dir / "supervisor.log").read_text()[-1500:] if state.dir.exists() else ""
            error = f"the lab supervisor exited during bring-up:\n{tail}"
        if state.dir.exists():
            td.teardown(LabState.load(state.name))
        raise NslabError(f"lab {state.name} failed to come up: {error}")
    return Lab.attach(state.name)


def running_labs() -> list[Lab]:
    labs = []
    for name in lab_names():
        try:
            labs.append(Lab.attach(name))
        except (NslabError, OSError, pickle.PickleError):
            continue
    return labs


def down_all(progress: Progress = lambda m: None) -> list[str]:
    """Stop every lab, and remove nslab-labelled leftovers whose state is gone."""
    stopped = []
    for name in lab_names():
        try:
            Lab.attach(name).down(progress)
        except (NslabError, OSError, pickle.PickleError):
            td.teardown(LabState.load(name), progress)
        stopped.append(name)
    # Leftovers labelled by labs whose state file is gone (e.g. /run was wiped).
    leftovers = set(cgroup.labs())
    for kind in all_kinds().values():
        leftovers |= kind.owners()
    if not cgroup.available():  # no cgroups: the process label is all there is
        leftovers |= set(td.labelled_pids(None).values())
    for lab in sorted(leftovers - set(stopped) - {""}):
        td.teardown(LabState(name=lab), progress)
        stopped.append(lab)
    try:
        from nslab import containers

        containers.remove(None)
    except ImportError:
        pass
    return stopped
