"""Container nodes: a Docker container that joins a topology like any host.

The container is created with no network of its own (`--network none`); the
engine then moves the topology's veth ends into the container's network
namespace with `ip link set IF netns <pid>` and configures them there with
nsenter (the technique Containernet uses). Everything created here carries the
labels `nslab.managed=1`, `nslab.lab=<lab>`, `nslab.node=<node>`, and `remove()`
only ever removes containers with all three (containers inherit their image's
labels, so nslab.managed=1 alone does not prove a container is nslab's).

Node settings use containerlab's key names (see docs/images.md):
`image`, `env`, `binds`, `exec`, `cpu`, `cpu-set`, `memory`, `shm-size`,
`cap-add`, `sysctls`, `user`, `entrypoint`, `cmd`, `devices`, `labels`, and
nslab's `gpus` (containerlab has no word for GPU requests).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nslab.errors import NslabError
from nslab.topo.model import Node

MANAGED = "nslab.managed"
LAB_LABEL = "nslab.lab"
NODE_LABEL = "nslab.node"

# Capabilities every container node gets: it must configure its own links.
# `--privileged` is refused on hosts where root lacks CAP_SYS_RESOURCE.
BASE_CAPS = ("NET_ADMIN", "NET_RAW")

# Keys (containerlab names) read from Node.config by start().
CONFIG_KEYS = frozenset(
    {
        "binds",
        "cpu",
        "cpu-set",
        "memory",
        "shm-size",
        "cap-add",
        "sysctls",
        "user",
        "entrypoint",
        "cmd",
        "devices",
        "gpus",
        "image-pull-policy",
    }
)

_MEM_RE = re.compile(r"^\d+(\.\d+)?\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_CMD = ["sleep", "infinity"]
# containerlab's image-pull-policy -> docker run --pull
_PULL = {"always": "always", "never": "never", "ifnotpresent": "missing"}


@dataclass
class ContainerInfo:
    id: str
    pid: int  # init pid of the container: its network namespace is /proc/<pid>/ns/net
    name: str
    image: str
    warnings: list[str] = field(default_factory=list)


# --- the docker client ------------------------------------------------------


def docker_bin() -> str:
    """The docker client: $NSLAB_DOCKER, else the distro client (/usr/bin/docker,
    whose API matches the distro engine), else whatever `docker` is on PATH."""
    env = os.environ.get("NSLAB_DOCKER")
    if env:
        return env
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if not found:
        raise NslabError(
            "the docker client is not installed: run `sudo bash scripts/provision.sh` "
            "(installs and starts the distro docker.io engine)"
        )
    return found


def docker(
    *args: str, check: bool = True, timeout: float | None = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one docker client command; on failure raise NslabError with its stderr."""
    cmd = [docker_bin(), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise NslabError(f"`{shlex.join(cmd)}` did not finish in {timeout} s") from exc
    if check and proc.returncode != 0:
        raise NslabError(
            f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


def docker_available() -> bool:
    """True when the client exists and the engine answers."""
    try:
        return (
            docker("version", "--format", "{{.Server.Version}}", check=False, timeout=15).returncode
            == 0
        )
    except NslabError:
        return False


def require_docker() -> None:
    if not docker_available():
        raise NslabError(
            "the Docker engine is not running: start it with `sudo bash scripts/provision.sh` "
            "(or `service docker start`); `nslab doctor` shows its state"
        )


# --- GPUs -----------------------------------------------------------------


def gpu_available() -> bool:
    """A GPU exists when `nvidia-smi -L` lists one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


# --- validation -------------------------------------------------------------


def container_name(lab: str, node: str) -> str:
    return f"nslab-{lab}-{node}"


def check_node(node: Node) -> list[str]:
    """Problems with a container node's settings, each naming where and how to fix.
    Kinds call this while validating a topology, before anything is created."""
    where = str(node.origin) or node.name
    problems: list[str] = []

    def bad(key: str, what: str) -> None:
        problems.append(f"{where}: node {node.name!r} key {key!r}: {what}")

    cfg = node.config
    for key, value in cfg.items():
        if key not in CONFIG_KEYS:
            continue
        if key in ("binds", "cap-add", "devices"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                bad(key, "must be a list of strings")
                continue
            if key == "binds":
                for b in value:
                    parts = b.split(":")
                    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
                        bad(
                            key,
                            f"{b!r} is not HOST:CONTAINER[:ro|rw] with an absolute container path",
                        )
                    elif len(parts) == 3 and parts[2] not in ("ro", "rw"):
                        bad(key, f"{b!r}: mode must be ro or rw")
        elif key == "cpu":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                bad(key, f"{value!r} must be a positive number of CPUs, e.g. 1.5")
        elif key in ("memory", "shm-size"):
            if not isinstance(value, (str, int)) or not _MEM_RE.match(str(value).strip()):
                bad(key, f"{value!r} is not a size such as 512MB or 1GB")
        elif key == "sysctls":
            if not isinstance(value, dict):
                bad(key, "must be a mapping such as {net.ipv4.ip_forward: 1}")
        elif key == "gpus":
            if not (
                value == "all"
                or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
            ):
                bad(key, f"{value!r} must be 'all' or a positive number of GPUs")
        elif key == "image-pull-policy":
            if str(value).lower() not in _PULL:
                bad(key, f"{value!r} must be one of IfNotPresent, Never, Always")
        elif key in ("cmd", "entrypoint", "cpu-set", "user"):
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                bad(key, "must be a string")
    for cmd in node.exec:
        if not isinstance(cmd, str) or not cmd.strip():
            bad("exec", f"{cmd!r}: every entry must be a non-empty command string")
    for k in node.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(k)):
            bad("env", f"{k!r} is not a valid environment variable name")
    if not _NAME_RE.match(node.name):
        bad("name", "container node names use letters, digits, '_', '.', '-'")
    return problems


def _memory_arg(value: Any) -> str:
    """containerlab writes sizes like 1GB / 512MiB; docker wants 1g / 512m."""
    m = re.match(r"^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$", str(value).strip())
    if not m:
        raise NslabError(f"memory size {value!r} is not like 512MB or 1GB")
    num, unit = m.group(1), m.group(2).lower()
    factor = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2}
    factor |= {"mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
    if unit not in factor:
        raise NslabError(f"memory size {value!r}: unknown unit {unit!r} (use b, kb, mb, gb)")
    return str(int(float(num) * factor[unit]))


# --- lifecycle ----------------------------------------------------------------


def run_args(
    lab: str, node: Node, image: str, *, gpu: bool | None = None
) -> tuple[list[str], list[str]]:
    """The `docker run` arguments for a node, and warnings (e.g. GPU asked, none here)."""
    problems = check_node(node)
    if problems:
        raise NslabError("\n".join(problems))
    cfg = node.config
    warnings: list[str] = []
    args = [
        "run",
        "--detach",
        "--init",  # reaps zombies of exec'd commands; the netns is the same
        "--network",
        "none",
        "--name",
        container_name(lab, node.name),
        "--hostname",
        node.name,
        "--label",
        f"{MANAGED}=1",
        "--label",
        f"{LAB_LABEL}={lab}",
        "--label",
        f"{NODE_LABEL}={node.name}",
    ]
    for k, v in node.labels.items():
        if not str(k).startswith("nslab."):  # ownership labels are not the user's to set
            args += ["--label", f"{k}={v}"]
    caps = list(BASE_CAPS) + [c for c in cfg.get("cap-add", []) if c not in BASE_CAPS]
    for cap in caps:
        args += ["--cap-add", cap]
    for k, v in node.env.items():
        args += ["--env", f"{k}={v}"]
    for b in cfg.get("binds", []):
        host = b.split(":", 1)[0]
        if not os.path.isabs(host):
            base = Path(node.origin.file).parent if node.origin.file != "<memory>" else Path.cwd()
            b = f"{(base / host).resolve()}:{b.split(':', 1)[1]}"  # relative to the topology file
        args += ["--volume", b]
    if "cpu" in cfg:
        args += ["--cpus", str(cfg["cpu"])]
    if "cpu-set" in cfg:
        args += ["--cpuset-cpus", str(cfg["cpu-set"])]
    if "memory" in cfg:
        args += ["--memory", _memory_arg(cfg["memory"])]
    if "shm-size" in cfg:
        args += ["--shm-size", _memory_arg(cfg["shm-size"])]
    for k, v in (cfg.get("sysctls") or {}).items():
        args += ["--sysctl", f"{k}={v}"]
    for d in cfg.get("devices", []):
        args += ["--device", d]
    if "user" in cfg:
        args += ["--user", str(cfg["user"])]
    if "gpus" in cfg:
        if gpu is None:
            gpu = gpu_available()
        if gpu:
            args += ["--gpus", str(cfg["gpus"])]
        else:
            warnings.append(
                f"node {node.name!r} asks for gpus={cfg['gpus']!r} but this machine has no GPU "
                "(nvidia-smi finds none): started without GPUs"
            )
    # nslab's images are built locally and never pulled: a missing one fails fast
    # instead of waiting on an unreachable registry.
    default_pull = "never" if image.startswith("nslab/") else "missing"
    policy = str(cfg.get("image-pull-policy", "")).lower()
    args += ["--pull", _PULL.get(policy, default_pull)]
    if "entrypoint" in cfg:
        args += ["--entrypoint", str(cfg["entrypoint"])]
    args.append(image)
    args += shlex.split(str(cfg["cmd"])) if "cmd" in cfg else DEFAULT_CMD
    return args, warnings


def inspect(ref: str) -> dict[str, Any] | None:
    """`docker inspect` of one container, or None when it does not exist."""
    proc = docker("container", "inspect", ref, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def start(lab: str, node: Node, image: str) -> ContainerInfo:
    """Create and start the container of `node` with no network of its own.
    Returns its id and init pid; the caller moves links in (attach_interface)
    and then runs the node's `exec` commands (run_exec)."""
    require_docker()
    name = container_name(lab, node.name)
    old = inspect(name)
    if old is not None:
        labels = old.get("Config", {}).get("Labels") or {}
        if _owned(labels, lab) and labels.get(NODE_LABEL) == node.name:
            # A leftover of a lab that was not taken down: it is ours, replace it.
            docker("rm", "--force", name)
        else:
            raise NslabError(
                f"a container named {name!r} exists and is not nslab's: rename or remove it "
                f"(`docker rm -f {name}`) or choose another lab name"
            )
    args, warnings = run_args(lab, node, image)
    proc = docker(*args, check=False, timeout=120)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        docker("rm", "--force", name, check=False)  # leave nothing half-built
        hint = ""
        if any(m in err for m in ("No such image", "Unable to find image", "pull access denied")):
            hint = " (build it with `sudo nslab images build`; no registry is used)"
        elif "could not select device driver" in err:
            hint = " (GPU requested: install nvidia-container-toolkit and restart dockerd)"
        raise NslabError(f"starting container {name} from {image} failed: {err}{hint}")
    cid = proc.stdout.strip()
    info = inspect(cid) or {}
    pid = int(info.get("State", {}).get("Pid") or 0)
    if not pid:
        logs = docker("logs", "--tail", "20", cid, check=False)
        docker("rm", "--force", cid, check=False)
        raise NslabError(
            f"container {name} exited right after start (its cmd must keep running): "
            f"{(logs.stdout + logs.stderr).strip()[-500:]}"
        )
    return ContainerInfo(id=cid, pid=pid, name=name, image=image, warnings=warnings)


def exec_cmd(lab: str, node: str, *, interactive: bool = False) -> list[str]:
    """Prefix that runs a command inside the node's container (its filesystem,
    environment and namespaces)."""
    return [docker_bin(), "exec", *(["-it"] if interactive else ["-i"]), container_name(lab, node)]


def run_exec(
    lab: str, node: Node, *, timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """Run the node's containerlab `exec` list in order, after its links are
    attached. A failing command raises NslabError naming the node and command."""
    results = []
    for cmd in node.exec:
        full = [*exec_cmd(lab, node.name), "sh", "-c", cmd]
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise NslabError(
                f"{node.origin}: node {node.name!r} exec {cmd!r} did not finish in {timeout} s"
            ) from exc
        if proc.returncode != 0:
            raise NslabError(
                f"{node.origin}: node {node.name!r} exec {cmd!r} failed "
                f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        results.append(proc)
    return results


def attach_interface(
    pid: int,
    ifname: str,
    name: str,
    ips: list[ipaddress.IPv4Interface] | None = None,
    mac: str | None = None,
    up: bool = True,
    offloads_off: bool = False,
) -> None:
    """Move host interface `ifname` into the network namespace of `pid`, rename
    it to `name` and configure it there (addresses, MAC, up). `offloads_off`
    turns off checksum/segmentation offloads, which TCP through the OVS
    userspace datapath needs."""
    _run(["ip", "link", "set", ifname, "netns", str(pid)])
    ns = ["nsenter", "--target", str(pid), "--net", "--"]
    if ifname != name:
        _run([*ns, "ip", "link", "set", ifname, "name", name])
    if mac:
        _run([*ns, "ip", "link", "set", name, "address", mac])
    for ip in ips or []:
        _run([*ns, "ip", "addr", "add", str(ip), "dev", name])
    if offloads_off:
        _run([*ns, "ethtool", "-K", name, "tx", "off", "tso", "off", "gso", "off"])
    if up:
        _run([*ns, "ip", "link", "set", "lo", "up"])
        _run([*ns, "ip", "link", "set", name, "up"])


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NslabError(f"`{shlex.join(cmd)}` failed: {proc.stderr.strip()}")


def _owned(labels: dict[str, str], lab: str | None) -> bool:
    """A container is nslab's when it carries all three ownership labels.
    nslab.managed=1 alone is not enough: containers inherit their image's
    labels, and nslab's images carry nslab.managed=1 too."""
    return (
        labels.get(MANAGED) == "1"
        and bool(labels.get(NODE_LABEL))
        and bool(labels.get(LAB_LABEL))
        and (lab is None or labels.get(LAB_LABEL) == lab)
    )


def list_containers(lab: str | None = None) -> list[dict[str, str]]:
    """nslab's containers (of one lab, or all): id, name, lab, node, state."""
    filters = ["--filter", f"label={MANAGED}=1", "--filter", f"label={NODE_LABEL}"]
    filters += ["--filter", f"label={LAB_LABEL}"]
    if lab is not None:
        filters += ["--filter", f"label={LAB_LABEL}={lab}"]
    fmt = '{{.ID}}\t{{.Names}}\t{{.Label "nslab.lab"}}\t{{.Label "nslab.node"}}\t{{.State}}'
    proc = docker("ps", "--all", "--no-trunc", *filters, "--format", fmt)
    out = []
    for line in proc.stdout.splitlines():
        cid, name, lab_, node, state = (line.split("\t") + [""] * 5)[:5]
        out.append({"id": cid, "name": name, "lab": lab_, "node": node, "state": state})
    return out


def remove(lab: str | None) -> list[str]:
    """Remove nslab's containers of `lab` (all nslab-labelled ones with None)
    and nothing else. Returns the names removed."""
    if lab is not None and not lab:
        raise NslabError("remove(lab): empty lab name (use None for every nslab container)")
    if not docker_available():
        return []  # no engine: nothing of ours can be running
    found = list_containers(lab)
    names = []
    for c in found:
        # Double-check the labels: a filter typo must never remove a stranger.
        info = inspect(c["id"])
        labels = ((info or {}).get("Config") or {}).get("Labels") or {}
        if not _owned(labels, lab):
            continue
        docker("rm", "--force", "--volumes", c["id"], check=False)
        names.append(c["name"])
    return names


# --- student code inside a container node -------------------------------------

# x86_64/arm64 share these numbers (asm-generic): open_tree 428, move_mount 429.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT = 428, 429
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC, _AT_RECURSIVE = 1, 0o2000000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH, _AT_FDCWD, _CLONE_NEWNS = 0x4, -100, 0x20000


def bind_into(pid: int, src: str | Path, dst: str) -> None:
    """Bind-mount host directory `src` at `dst` inside the running container
    whose init is `pid` (like `docker run -v`, but after the container was
    created: the submission exists only once the lab is up). The new mount API
    does it: clone `src` as a detached mount (open_tree), enter the
    container's mount namespace (setns) and attach it there (move_mount), as
    systemd's `machinectl bind` does. Runs in a forked child: setns into a
    mount namespace needs a single-threaded process."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        os.close(r)
        msg = b""
        try:
            flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE
            tree = libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(str(src)), flags)
            if tree < 0:
                raise OSError(ctypes.get_errno(), f"open_tree({src})")
            ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
            if libc.setns(ns, _CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns(mnt)")
            os.makedirs(dst, mode=0o755, exist_ok=True)
            rc = libc.syscall(
                _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(dst), _MOVE_MOUNT_F_EMPTY_PATH
            )
            if rc != 0:
                raise OSError(ctypes.get_errno(), f"move_mount(-> {dst})")
        except OSError as exc:
            msg = f"{exc.strerror or exc} ({exc.filename or exc.args[-1]})".encode()
        os.write(w, msg)
        os._exit(1 if msg else 0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise NslabError(f"cannot bind {src} into the container of pid {pid} at {dst}: {err}")


def student_exec_argv(
    pid: int,
    uid: int,
    gid: int,
    argv: list[str],
    *,
    caps: tuple[str, ...] | list[str] = (),
    cwd: str = "/work",
    rlimits: list[tuple[str, int]] | tuple = (),
) -> list[str]:
    """`argv` run inside the container whose init is `pid` as sandboxed
    student code: all of the container's namespaces (its file system, its own
    PID view, its network), as `uid`/`gid` with only `caps` (ambient, so they
    survive exec into python), no new privileges, and `rlimits` (prlimit
    names: cpu, as, nproc, fsize, nofile, core).

    nsenter rather than `docker exec`: the program stays a child of the
    grader, in the grader's process group bookkeeping, so SIGTERM reaches it
    directly (it writes its report on the way out; `docker exec` forwards no
    signals) and the lab's teardown and cgroup own it like any other process.
    setpriv and the program are the container's own (nsenter enters its
    mount namespace before it executes anything)."""
    limits = [f"--{name}={value}" for name, value in rlimits]
    plus = ",".join(f"+{c}" for c in caps)
    keep = f",{plus}" if plus else ""
    cmd = ["prlimit", *limits, "--"] if limits else []
    cmd += ["nsenter", f"--target={pid}", "--mount", "--uts", "--ipc", "--net", "--pid", "--"]
    # `env --chdir` runs inside the container's file system. Never nsenter's
    # --wd: it opens the directory on the host's side, and a cwd outside the
    # container's root is a way out of it (`ls ..` lists the host's /).
    cmd += ["env", f"--chdir={cwd}"]
    cmd += ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs"]
    cmd += [f"--inh-caps=-all{keep}", f"--bounding-set=-all{keep}"]
    if plus:
        cmd.append(f"--ambient-caps={plus}")
    return [*cmd, "--", *argv]
