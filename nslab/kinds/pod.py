"""`pod`: an inference pod — a host whose namespace runs a model server that
speaks the Open Inference Protocol (KServe v2), with Triton-style dynamic
batching. Its keys are the pod settings of nslab.serving.pod.PodConfig:

    llm1:
      kind: pod
      ip: 10.0.0.11/24
      model: digits          # identity | digits | cnn (built locally)
      device: sim-gpu        # cpu | cuda | sim-gpu
      profile: t4-resnet50   # sim-gpu timing profile (docs/serving.md)
      max_batch_size: 8
      max_queue_delay_us: 2000
      port: 8000
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from nslab.kinds import NamespaceHost, Service, register

if TYPE_CHECKING:
    from nslab.topo.model import Node, Topology


def pod_port(node: Node) -> int:
    """The TCP port a pod node serves on."""
    from nslab.serving.pod import PodConfig

    return PodConfig.from_dict({k: v for k, v in node.config.items() if k in _pod_keys()}).port


def _pod_keys() -> frozenset[str]:
    from nslab.serving.pod import PodConfig

    return frozenset(f.name for f in fields(PodConfig))


@register
class Pod(NamespaceHost):
    name = "pod"
    allowed_keys = frozenset({"ip", "gateway", "interfaces"}) | _pod_keys()
    description = "host: an inference pod (OIP/KServe v2 model server with dynamic batching)"
    graph_style = {"shape": "box3d", "style": "filled", "fillcolor": "#bbf7d0"}

    def _config(self, node: Node) -> dict:
        return {k: v for k, v in node.config.items() if k in _pod_keys()}

    def validate(self, node: Node, topo: Topology) -> list[str]:
        from nslab.errors import NslabError
        from nslab.serving.pod import PodConfig

        try:
            PodConfig.from_dict(self._config(node), where=f"pod {node.name}")
        except NslabError as exc:
            return [str(exc)]
        return []

    def services(self, node: Node, topo: Topology) -> list[Service]:
        from nslab.serving.pod import PodConfig, command

        cfg = self._config(node)
        cfg.setdefault("name", node.name)
        port = PodConfig.from_dict(cfg).port
        return [Service("pod", command(cfg), ready_port=port)]
