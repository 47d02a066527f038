"""Node kinds: one module per kind, registered here by name.

A kind owns its nodes' whole life: what a node is (a host in its own
namespace, or a switch whose ports live in the root namespace), which keys it
takes and what is wrong with it (`validate`), what the host must offer
(`prepare`, in the caller, before anything exists), how its nodes are made
(`create`, all nodes of the kind at once so that work is batched), configured
(`configure`) and run (`services`), and how what it made is removed again
(`teardown`, from the lab's recorded state alone). The engine calls these
hooks in its phases and never compares kind names; a new kind is one module
that calls `register()` (docs/instructor-guide.md shows one).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from nslab.engine.state import LabState
    from nslab.topo.model import Node, Topology


class Builder(Protocol):
    """What the engine offers a kind while it builds a lab (nslab.engine.build)."""

    lab: str
    topo: Topology
    state: LabState
    progress: Callable[[str], None]
    userspace_ovs: bool  # OVS runs its userspace datapath (no kernel module)

    def run(self, cmd: list[str], input: str | None = None) -> str: ...
    def ip_batch(self, lines: list[str]) -> None: ...
    def ofports(self, node: str) -> dict[str, int]: ...
    def start_shells(self, nodes: list[Node]) -> None: ...
    def configure_addresses(self, nodes: list[Node]) -> None: ...
    def allocate_controller_port(self) -> None: ...
    def has_switch_loop(self) -> bool: ...
    def acquire_sysctl(self, key: str, value: str) -> None: ...


# Node keys containerlab defines (its JSON schema, node-config). nslab accepts
# and keeps them so that containerlab files load as-is; most only matter to
# container kinds.
CONTAINERLAB_NODE_KEYS = frozenset(
    """image image-pull-policy restart-policy kind license type group startup-config
    startup-delay enforce-startup-config suppress-startup-config auto-remove exec binds
    volumes ports env credentials env-files user hostname entrypoint cmd labels runtime
    mgmt-ipv4 mgmt-ipv6 network-mode link-apply-mode cpu memory cpu-set extras config
    stages dns certificate healthcheck components aliases shm-size cap-add privileged
    cgroupns-mode cgroup-parent pid-mode tmpfs security-opts sysctls devices""".split()
)


class Kind:
    """Base class of node kinds. Subclasses set the class attributes."""

    name: ClassVar[str] = ""
    role: ClassVar[str] = "host"  # "host" or "switch"
    # True: the node's interfaces live in the root namespace (switches, bridges)
    root_namespace: ClassVar[bool] = False
    # True: the node is an OpenFlow switch and gets a datapath id
    openflow: ClassVar[bool] = False
    # nslab keys (beyond containerlab's) this kind accepts on a node
    allowed_keys: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""
    # Graphviz node attributes for `nslab graph` (shape, colour): each kind looks different
    graph_style: ClassVar[dict[str, str]] = {
        "shape": "box",
        "style": "filled",
        "fillcolor": "white",
    }

    def validate(self, node: Node, topo: Topology) -> list[str]:
        """Problems with `node` that only this kind knows about, as
        'key: what is wrong — how to fix' (the caller adds file and line
        unless the message already starts with the node's origin)."""
        return []

    def services(self, node: Node, topo: Topology) -> list[Service]:
        """Long-running processes the engine starts in the node once its links
        are configured (e.g. a pod's model server). Default: none."""
        return []

    # -- lifecycle: each hook gets every node of this kind in the topology ----
    def prepare(self, nodes: list[Node], progress: Callable[[str], None]) -> None:
        """Before anything is created, in the calling process: fail with a
        CapabilityError when the host lacks what these nodes need, or get
        ready (e.g. build an image). Default: nothing to do."""

    def create(self, nodes: list[Node], b: Builder) -> None:
        """Make the nodes. Host kinds run before the links exist (the links'
        ends are created inside their namespaces), switch kinds after (their
        ports are the links' root-namespace ends). Record before creating."""

    def configure(self, nodes: list[Node], b: Builder) -> None:
        """After the links: addresses, routes, anything inside the nodes."""

    def peer_needs_offloads_off(self, b: Builder) -> bool:
        """Whether a namespace end of a link to this node must have checksum
        and segmentation offloads off (OVS's userspace datapath)."""
        return False

    def teardown(self, state: LabState) -> None:
        """Remove what `create` made, from the recorded state (idempotent;
        the supervisor may be gone)."""

    def owners(self) -> set[str]:
        """Labs that own resources of this kind on the host now (by their
        labels), for `down --all` after the lab's state is lost."""
        return set()


@dataclass
class Service:
    """A process a kind runs inside its node; the engine starts it, waits until
    `ready_port` listens (when set) and stops it at teardown."""

    name: str
    argv: list[str]
    ready_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, Kind] = {}
_discovered = False


def register(kind: type[Kind] | Kind) -> type[Kind] | Kind:
    """Register a kind (usable as a class decorator)."""
    inst = kind() if isinstance(kind, type) else kind
    if not inst.name or inst.role not in ("host", "switch"):
        raise ValueError(f"kind {inst!r} needs a name and role 'host' or 'switch'")
    _REGISTRY[inst.name] = inst
    return kind


def _discover() -> None:
    """The kinds in this package, then the modules named in $NSLAB_KINDS
    (comma-separated, importable: an instructor's own kinds, without editing
    the kit; the engine's supervisor inherits the variable)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    for mod in filter(None, (m.strip() for m in os.environ.get("NSLAB_KINDS", "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ImportError(f"NSLAB_KINDS names {mod!r}, which does not import: {exc}") from exc


def get(name: str) -> Kind | None:
    """The kind called `name`, or None."""
    _discover()
    return _REGISTRY.get(name)


def all_kinds() -> dict[str, Kind]:
    """Every registered kind by name."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def by_kind(topo: Topology) -> list[tuple[Kind, list[Node]]]:
    """The topology's nodes grouped by kind, in the order kinds first appear."""
    groups: dict[str, list[Node]] = {}
    for n in topo.nodes.values():
        groups.setdefault(n.kind, []).append(n)
    out = []
    for name, nodes in groups.items():
        kind = get(name)
        if kind is None:
            raise ValueError(f"unknown kind {name!r}")
        out.append((kind, nodes))
    return out


class NamespaceHost(Kind):
    """Base of host kinds: each node is a shell in a network namespace of its
    own (pods and dispatchers add services on top)."""

    role: ClassVar[str] = "host"

    def create(self, nodes: list[Node], b: Builder) -> None:
        b.start_shells(nodes)

    def configure(self, nodes: list[Node], b: Builder) -> None:
        b.configure_addresses(nodes)
