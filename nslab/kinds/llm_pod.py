"""`llm-pod`: an LLM pod — a host whose namespace runs `nslab serve llm`, the
OpenAI-compatible server of nslab.llm (docs/llm.md). Its keys are the
server's options:

    llm1:
      kind: llm-pod
      ip: 10.0.0.21/24
      model: tiny               # tiny | smollm2
      device: cpu               # cpu | cuda
      port: 8000
      block_size: 16            # tokens per KV block
      num_blocks: 512           # KV blocks in the cache
      max_num_seqs: 16          # sequences per batch
      max_num_batched_tokens: 256   # token budget of one step
      max_model_len: 2048
      prefix_caching: true
      policy: fcfs              # fcfs | shortest-first | socket:PATH
      threads: 1                # torch CPU threads (default: torch's)

The engine starts the server once the node's links are configured and the lab
is ready when its port answers.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from nslab.kinds import NamespaceHost, Service, register

if TYPE_CHECKING:
    from nslab.topo.model import Node, Topology

MODELS = ("tiny", "smollm2")
DEVICES = ("cpu", "cuda")
# key -> (default, lowest allowed) for the integer settings
INTS: dict[str, tuple[int | None, int]] = {
    "port": (8000, 1),
    "block_size": (16, 1),
    "num_blocks": (512, 1),
    "max_num_seqs": (16, 1),
    "max_num_batched_tokens": (256, 1),
    "max_model_len": (2048, 2),
    "threads": (None, 1),
}
KEYS = frozenset({"model", "device", "prefix_caching", "policy", *INTS})


def _problems(cfg: dict[str, Any]) -> list[str]:
    out = []
    model = cfg.get("model", "tiny")
    if model not in MODELS:
        out.append(f"model: unknown model {model!r} — use one of {', '.join(MODELS)}")
    device = cfg.get("device", "cpu")
    if device not in DEVICES:
        out.append(f"device: unknown device {device!r} — use one of {', '.join(DEVICES)}")
    for key, (_, low) in INTS.items():
        if key not in cfg:
            continue
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            out.append(f"{key}: must be an integer >= {low} (got {v!r})")
        elif key == "port" and v > 65535:
            out.append(f"port: must be 1..65535 (got {v})")
    if not isinstance(cfg.get("prefix_caching", True), bool):
        out.append(f"prefix_caching: must be true or false (got {cfg['prefix_caching']!r})")
    policy = cfg.get("policy", "fcfs")
    from nslab.llm.policy import POLICIES

    if not isinstance(policy, str) or not (policy in POLICIES or policy.startswith("socket:/")):
        out.append(
            f"policy: unknown policy {policy!r} — use one of {', '.join(POLICIES)} "
            "or socket:/ABSOLUTE/PATH (a policy process connects there)"
        )
    return out


def command(cfg: dict[str, Any], host: str = "0.0.0.0") -> list[str]:
    """The `nslab serve llm` command line for this node config (already valid)."""
    argv = [sys.executable, "-m", "nslab", "serve", "llm", "--host", host]
    argv += ["--model", cfg.get("model", "tiny"), "--device", cfg.get("device", "cpu")]
    for key, (default, _) in INTS.items():
        v = cfg.get(key, default)
        if v is not None:
            argv += [f"--{key.replace('_', '-')}", str(v)]
    if not cfg.get("prefix_caching", True):
        argv.append("--no-prefix-caching")
    argv += ["--policy", cfg.get("policy", "fcfs")]
    return argv


def llm_port(node: Node) -> int:
    return int(node.config.get("port", INTS["port"][0]))


@register
class LLMPod(NamespaceHost):
    name = "llm-pod"
    allowed_keys = frozenset({"ip", "gateway", "interfaces"}) | KEYS
    description = "host: an LLM pod (nslab.llm engine behind an OpenAI-compatible API)"
    graph_style = {"shape": "box3d", "style": "filled", "fillcolor": "#fde68a"}

    def _config(self, node: Node) -> dict[str, Any]:
        return {k: v for k, v in node.config.items() if k in KEYS}

    def validate(self, node: Node, topo: Topology) -> list[str]:
        return _problems(self._config(node))

    def services(self, node: Node, topo: Topology) -> list[Service]:
        cfg = self._config(node)
        return [Service("llm", command(cfg), ready_port=llm_port(node))]
