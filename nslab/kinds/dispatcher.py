"""`dispatcher`: an L7 front end in the topology that routes inference requests
to pod nodes with a pluggable policy (nslab.serving.dispatcher):

    fe:
      kind: dispatcher
      pods: [p1, p2, p3]        # pod nodes of this topology (or NAME=URL strings)
      policy: round-robin       # round-robin | random | maglev | FILE.py:Class | socket:PATH
      port: 8080
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nslab.kinds import NamespaceHost, Service, register

if TYPE_CHECKING:
    from nslab.topo.model import Node, Topology

KEYS = frozenset(
    {"pods", "policy", "port", "retries", "timeout_s", "poll_interval_s", "policy_deadline_ms"}
)


@register
class Dispatcher(NamespaceHost):
    name = "dispatcher"
    allowed_keys = frozenset({"ip", "gateway", "interfaces"}) | KEYS
    description = "host: an L7 dispatcher routing inference requests to pods"
    graph_style = {"shape": "component", "style": "filled", "fillcolor": "#fbcfe8"}

    def pod_urls(self, node: Node, topo: Topology) -> list[str]:
        """`pods:` as NAME=URL strings: pod node names become their address and port."""
        from nslab.kinds.pod import pod_port

        pods = node.config.get("pods") or []
        if isinstance(pods, str):
            pods = [p.strip() for p in pods.split(",") if p.strip()]
        out = []
        for p in pods:
            target = topo.nodes.get(str(p))
            if target is not None and target.kind == "pod" and target.ip is not None:
                out.append(f"{p}=http://{target.ip.ip}:{pod_port(target)}")
            else:
                out.append(str(p))
        return out

    def validate(self, node: Node, topo: Topology) -> list[str]:
        pods = node.config.get("pods")
        if not pods:
            return ["pods: a dispatcher needs pods — list pod nodes, e.g. `pods: [p1, p2]`"]
        problems = []
        for p in pods if isinstance(pods, list) else str(pods).split(","):
            p = str(p).strip()
            if "=" not in p and (p not in topo.nodes or topo.nodes[p].kind != "pod"):
                problems.append(
                    f"pods: '{p}' is not a pod node of this topology — "
                    "name a `kind: pod` node, or write NAME=URL"
                )
        return problems

    def services(self, node: Node, topo: Topology) -> list[Service]:
        from nslab.serving.dispatcher import command

        cfg = {k: v for k, v in node.config.items() if k in KEYS}
        cfg["pods"] = ",".join(self.pod_urls(node, topo))
        cfg.setdefault("port", 8080)
        cfg["host"] = "0.0.0.0"
        return [Service("dispatcher", command(cfg), ready_port=int(cfg["port"]))]
