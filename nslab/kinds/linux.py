"""`linux`: a host in its own network namespace; with `image`, a Docker
container (no network of its own: the topology's links are created straight
into its namespace)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nslab.kinds import Builder, NamespaceHost, register

if TYPE_CHECKING:
    from collections.abc import Callable

    from nslab.engine.state import LabState
    from nslab.topo.model import Node, Topology


@register
class Linux(NamespaceHost):
    name = "linux"
    # gpus: nslab's GPU request for container hosts (containerlab has no word for it)
    allowed_keys = frozenset({"ip", "gateway", "interfaces", "gpus"})
    description = "host: a network namespace (a container when `image` is set)"
    graph_style = {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbeafe"}

    def validate(self, node: Node, topo: Topology) -> list[str]:
        if not node.image:
            return []
        from nslab import containers  # only container hosts need it

        return containers.check_node(node)

    def prepare(self, nodes: list[Node], progress: Callable[[str], None]) -> None:
        """Container nodes: map `nslab/<name>` to its current hash tag, building
        it first if needed (offline, from the local base)."""
        boxed = [n for n in nodes if n.image]
        if not boxed:
            return
        from nslab import containers, images

        containers.require_docker()
        for n in boxed:
            n.image = images.resolve(n.image, progress=progress)

    def create(self, nodes: list[Node], b: Builder) -> None:
        boxed = [n for n in nodes if n.image]
        if boxed:
            self._start_containers(boxed, b)
        super().create([n for n in nodes if not n.image], b)

    def _start_containers(self, nodes: list[Node], b: Builder) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from nslab import containers

        b.progress(f"starting {len(nodes)} containers")
        for n in nodes:
            b.state.containers[n.name] = containers.container_name(b.lab, n.name)
        b.state.save()
        with ThreadPoolExecutor(max_workers=4) as pool:
            infos = list(pool.map(lambda n: containers.start(b.lab, n, n.image), nodes))
        for n, info in zip(nodes, infos, strict=True):
            b.state.hosts[n.name] = info.pid
            for w in info.warnings:
                b.progress(f"warning: {n.name}: {w}")
        b.state.save()

    def configure(self, nodes: list[Node], b: Builder) -> None:
        super().configure(nodes, b)
        boxed = [n for n in nodes if n.image]
        if boxed:
            from nslab import containers

            for n in boxed:
                containers.run_exec(b.lab, n)

    def teardown(self, state: LabState) -> None:
        if state.containers:
            from nslab import containers

            containers.remove(state.name)

    def owners(self) -> set[str]:
        from nslab import containers

        if not containers.docker_available():
            return set()
        return {c["lab"] for c in containers.list_containers() if c["lab"]}
