"""Lab discovery and the lab contract (`labs/<id>/lab.yaml`).

A lab is a folder: `lab.yaml` (what to bring up and how to grade it),
`README.md` (the guide), `starter/`, `checks/` (pytest files run by the
grader), and two grader-only folders that a student release leaves out:
`solution/` and `grader/` (hidden checks in `grader/checks/`, hidden variants
in `grader/variants.yaml`, and any other grader-only code). The lab id is the
folder name.
`load_lab` validates lab.yaml and reports every problem with file, line and key.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nslab import REPO_ROOT
from nslab.errors import NslabError
from nslab.problems import Problem, Problems
from nslab.yamlsrc import YamlError, duplicate_problems, line_at, parse, plain

GRADER_DIR = "grader"  # labs/<id>/grader/: grader-only files, never in a student release
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
_TOP_KEYS = {
    "title",
    "name",
    "topology",
    "params",
    "controller",
    "services",
    "playground",
    "time_budget",
    "setup_timeout",
    "check_timeout",
    "limits",
    "submit",
    "due",
    "variants",
}
_SERVICE_KEYS = {"name", "node", "command", "user", "port", "ready", "env", "caps"}
# capabilities a sandboxed service may keep (ambient), e.g. an NF's raw sockets
SERVICE_CAPS = ("net_raw", "net_admin", "net_bind_service")
_READY_KEYS = {"port", "file", "log", "delay", "timeout"}
_VARIANT_KEYS = {"params", "visibility", "weight"}
_LIMIT_KEYS = {"cpu_s", "memory_mb", "nproc", "fsize_mb", "nofile", "disk_mb"}


class LabError(NslabError):
    """lab.yaml is wrong, or a lab id does not exist."""

    exit_code = 2


@dataclass
class Ready:
    """When a service counts as started: a TCP port answers, a file in the
    work dir exists, a log line matches, or simply after a delay."""

    port: bool = False
    file: str | None = None
    log: str | None = None
    delay: float = 0.0
    timeout: float = 10.0


@dataclass
class Service:
    name: str
    command: str | list[str]
    node: str | None = None  # None: the grading host's root namespace
    user: str = "student"  # student (sandboxed) or grader (root; trusted lab code only)
    port: bool = False  # True: the grader picks a free TCP port ({port}, $PORT)
    ready: Ready = field(default_factory=Ready)
    env: dict[str, str] = field(default_factory=dict)
    caps: list[str] = field(default_factory=list)  # ambient capabilities of a student service


@dataclass
class Variant:
    """Another run of the checks on a differently parametrised lab."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    visibility: str = "hidden"
    weight: float = 1.0


@dataclass
class LabSpec:
    id: str
    path: Path
    title: str
    name: str  # short instance name (interface names are <name>-<node>-<iface>)
    topology: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    controller: str | None = None  # path relative to the submission
    services: list[Service] = field(default_factory=list)
    playground: list[Service] = field(default_factory=list)  # `lab start` only
    time_budget: float = 600.0
    setup_timeout: float = 180.0
    check_timeout: float = 60.0
    limits: dict[str, int] = field(default_factory=dict)
    submit: list[str] = field(default_factory=list)
    due: dt.datetime | None = None
    variants: list[Variant] = field(default_factory=list)

    @property
    def checks_dir(self) -> Path:
        return self.path / "checks"

    @property
    def topology_path(self) -> str | None:
        """The topology as the engine takes it: a path when the lab ships its
        own file, else a name from topologies/."""
        if self.topology is None:
            return None
        local = self.path / self.topology
        return str(local) if local.is_file() else self.topology


def labs_root() -> Path:
    """Where labs live: $NSLAB_LABS, else the repository's labs/."""
    return Path(os.environ.get("NSLAB_LABS", REPO_ROOT / "labs"))


def list_labs(root: Path | None = None) -> list[LabSpec]:
    root = root or labs_root()
    if not root.is_dir():
        return []
    return [load_lab(p) for p in sorted(root.iterdir()) if (p / "lab.yaml").is_file()]


def find_lab(lab_id: str, root: Path | None = None) -> LabSpec:
    """A lab by id (folder name) or by path to its folder."""
    p = Path(lab_id)
    if (p / "lab.yaml").is_file():
        return load_lab(p)
    root = root or labs_root()
    cand = root / lab_id
    if (cand / "lab.yaml").is_file():
        return load_lab(cand)
    known = [d.name for d in sorted(root.iterdir())] if root.is_dir() else []
    hint = difflib.get_close_matches(lab_id, known, n=1)
    msg = f"no lab '{lab_id}' in {root}"
    msg += (
        f" (did you mean '{hint[0]}'?)" if hint else f"; known labs: {', '.join(known) or 'none'}"
    )
    raise LabError(msg + "; `nslab lab list` shows them")


class _Problems:
    """The problems of one lab.yaml; each key's line comes from the parsed source."""

    def __init__(self, file: Path, raw: Any):
        self.file, self.raw, self.found = str(file), raw, Problems()

    def add(self, key: str, msg: str) -> None:
        self.found.append(Problem(self.file, line_at(self.raw, key), key, msg))


def _unknown(p: _Problems, where: str, data: dict, allowed: set[str]) -> None:
    for k in data:
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(sorted(allowed))}"
            p.add(f"{where}{k}", f"unknown key ({fix})")


def _number(p: _Problems, key: str, v: Any, lo: float = 0.0) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= lo:
        p.add(key, f"must be a number > {lo:g} (got {v!r})")
        return None
    return float(v)


def load_lab(path: Path) -> LabSpec:
    """Parse and validate `path/lab.yaml`. Raises LabError listing every problem."""
    path = Path(path).resolve()
    file = path / "lab.yaml"
    try:
        raw = parse(file.read_text())
    except OSError as exc:
        raise LabError(f"{file}: cannot read: {exc.strerror}") from None
    except YamlError as exc:
        raise LabError(str(exc.as_problem(str(file), "not valid YAML"))) from None
    if not isinstance(raw, dict):
        raise LabError(f"{file}: must be a mapping with at least `title:`")
    p = _Problems(file, raw)
    for dup in duplicate_problems(raw, str(file)):
        p.found.append(dup)
    data = plain(raw)
    _unknown(p, "", data, _TOP_KEYS)

    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        p.add("title", "required: a one-line title of the lab")
    num = re.match(r"(\d+)", path.name)
    name = data.get("name", f"lab{num.group(1)}" if num else path.name[:5])
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9]{0,5}", name):
        p.add("name", f"must be 1-6 lowercase letters/digits starting with a letter (got {name!r})")
    topo = data.get("topology")
    if topo is not None and not isinstance(topo, str):
        p.add("topology", "must be a topology name from topologies/ or a path in the lab folder")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        p.add("params", "must be a mapping of template parameters")
        params = {}
    ctrl = data.get("controller")
    if ctrl is not None and (not isinstance(ctrl, str) or ctrl.startswith("/") or ".." in ctrl):
        p.add("controller", "must be a relative path inside the submission, e.g. controller.py")

    services = _services(p, "services", data.get("services"))
    # playground: what `nslab lab start` also runs for the student to try things
    # against (e.g. lab 4's fleet of pods); grading ignores it
    playground = _services(p, "playground", data.get("playground"))
    names = [s.name for s in services + playground]
    for n in {n for n in names if names.count(n) > 1}:
        p.add("services", f"service name '{n}' used twice (services and playground)")

    timing = {}
    for key, default in (("time_budget", 600.0), ("setup_timeout", 180.0), ("check_timeout", 60.0)):
        timing[key] = _number(p, key, data.get(key, default)) or default
    limits = data.get("limits") or {}
    if not isinstance(limits, dict):
        p.add("limits", "must be a mapping, e.g. {memory_mb: 512, nproc: 64}")
        limits = {}
    _unknown(p, "limits.", limits, _LIMIT_KEYS)
    for k, v in limits.items():
        if k in _LIMIT_KEYS and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            p.add(f"limits.{k}", f"must be a positive integer (got {v!r})")
    submit = data.get("submit") or []
    if not isinstance(submit, list) or not all(isinstance(s, str) for s in submit):
        p.add("submit", "must be a list of file names the student hands in")
        submit = []
    due = data.get("due")
    if isinstance(due, str):
        try:
            due = dt.datetime.fromisoformat(due)
        except ValueError:
            p.add("due", f"not an ISO date/time (got {due!r}); e.g. 2026-12-01T23:59:00+01:00")
            due = None
    elif isinstance(due, dt.date) and not isinstance(due, dt.datetime):
        due = dt.datetime.combine(due, dt.time(23, 59, 59))
    elif due is not None and not isinstance(due, dt.datetime):
        p.add("due", f"not a date (got {due!r})")
        due = None
    if isinstance(due, dt.datetime) and due.tzinfo is None:
        due = due.astimezone()  # local time, like a human writes it

    variants = _variants(p, "variants", data.get("variants") or {}, params)
    # Grader-only variants (hidden from students; a student release drops grader/).
    gfile = path / GRADER_DIR / "variants.yaml"
    if gfile.is_file():
        variants += _grader_variants(gfile, params, {v.name for v in variants})

    if p.found:
        raise LabError("\n".join(p.found.messages()))
    return LabSpec(
        id=path.name,
        path=path,
        title=title.strip(),
        name=name,
        topology=topo,
        params=params,
        controller=ctrl,
        services=services,
        playground=playground,
        time_budget=timing["time_budget"],
        setup_timeout=timing["setup_timeout"],
        check_timeout=timing["check_timeout"],
        limits=dict(limits),
        submit=list(submit),
        due=due,
        variants=variants,
    )


def _variants(p: _Problems, where: str, raw: Any, params: dict[str, Any]) -> list[Variant]:
    if not isinstance(raw, dict):
        p.add(where, "must be a mapping name -> {params, visibility, weight}")
        return []
    variants = []
    for vname, v in raw.items():
        key = f"{where}.{vname}" if where else str(vname)
        if not isinstance(v, dict):
            p.add(key, "must be a mapping with params / visibility / weight")
            continue
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(vname)) or vname == "default":
            p.add(key, "variant names are letters, digits, '_' and not 'default'")
        _unknown(p, key + ".", v, _VARIANT_KEYS)
        vis = v.get("visibility", "hidden")
        if vis not in VISIBILITIES:
            p.add(f"{key}.visibility", f"must be one of {', '.join(VISIBILITIES)}")
        vparams = v.get("params") or {}
        if not isinstance(vparams, dict):
            p.add(f"{key}.params", "must be a mapping")
            vparams = {}
        weight = _number(p, f"{key}.weight", v.get("weight", 1.0)) or 1.0
        variants.append(Variant(str(vname), {**params, **vparams}, vis, weight))
    return variants


def _grader_variants(file: Path, params: dict[str, Any], taken: set[str]) -> list[Variant]:
    """`grader/variants.yaml`: the same mapping as lab.yaml's `variants:`."""
    try:
        raw = parse(file.read_text())
    except OSError as exc:
        raise LabError(f"{file}: cannot read: {exc.strerror}") from None
    except YamlError as exc:
        raise LabError(str(exc.as_problem(str(file), "not valid YAML"))) from None
    p = _Problems(file, raw)
    variants = _variants(p, "", plain(raw) or {}, params)
    for v in variants:
        if v.name in taken:
            p.add(v.name, "this variant is also in lab.yaml: define it in one place")
    if p.found:
        raise LabError("\n".join(p.found.messages()))
    return variants


def _services(p: _Problems, key: str, raw: Any) -> list[Service]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        p.add(key, "must be a list of {name, command, ...}")
        return []
    return [_service(p, f"{key}.{i}", s) for i, s in enumerate(raw)]


def _service(p: _Problems, key: str, s: Any) -> Service:
    if not isinstance(s, dict):
        p.add(key, "must be a mapping with at least name and command")
        return Service(name=f"?{key}", command="true")
    _unknown(p, key + ".", s, _SERVICE_KEYS)
    name = s.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        p.add(f"{key}.name", "required: letters, digits, '-', '_'")
        name = f"?{key}"
    cmd = s.get("command")
    if not (isinstance(cmd, str) and cmd.strip()) and not (
        isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd)
    ):
        p.add(f"{key}.command", "required: a shell string or a list of arguments")
        cmd = "true"
    user = s.get("user", "student")
    if user not in ("student", "grader"):
        p.add(f"{key}.user", "must be 'student' (sandboxed, default) or 'grader' (root)")
    node = s.get("node")
    if node is not None and not isinstance(node, str):
        p.add(f"{key}.node", "must be a node name of the topology")
    port = s.get("port", False)
    if port not in (False, None, "auto", True):
        p.add(f"{key}.port", "must be 'auto' (the grader picks a free port) or absent")
    env = s.get("env") or {}
    if not isinstance(env, dict):
        p.add(f"{key}.env", "must be a mapping NAME: value")
        env = {}
    caps = s.get("caps") or []
    if not isinstance(caps, list) or not all(c in SERVICE_CAPS for c in caps):
        p.add(f"{key}.caps", f"must be a list of capabilities out of {', '.join(SERVICE_CAPS)}")
        caps = []
    if caps and user != "student":
        p.add(f"{key}.caps", "only for user: student (a grader service runs as root anyway)")
    r = s.get("ready") or {}
    ready = Ready()
    if not isinstance(r, dict):
        p.add(f"{key}.ready", "must be a mapping, e.g. {port: true, timeout: 10}")
    else:
        _unknown(p, f"{key}.ready.", r, _READY_KEYS)
        ready = Ready(
            port=bool(r.get("port", False)),
            file=r.get("file"),
            log=r.get("log"),
            delay=float(r.get("delay", 0.0) or 0.0),
            timeout=_number(p, f"{key}.ready.timeout", r.get("timeout", 10.0)) or 10.0,
        )
        if ready.port and not port:
            p.add(f"{key}.ready.port", "needs `port: auto` on the service")
    return Service(
        name=name,
        command=cmd,
        node=node,
        user=user,
        port=port in ("auto", True),
        ready=ready,
        env={str(k): str(v) for k, v in env.items()},
        caps=list(caps),
    )
