"""`linux`: a host in its own network namespace (with `image`: a container, later)."""

from __future__ import annotations

from nslab.kinds import Kind, register


@register
class Linux(Kind):
    name = "linux"
    role = "host"
    allowed_keys = frozenset({"ip", "gateway", "interfaces"})
    description = "host: a network namespace (a container when `image` is set)"
    graph_style = {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbeafe"}
