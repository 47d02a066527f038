"""`bridge`: a Linux bridge (plain L2 learning, no controller)."""

from __future__ import annotations

from nslab.kinds import Kind, register


@register
class Bridge(Kind):
    name = "bridge"
    role = "switch"
    root_namespace = True
    allowed_keys = frozenset({"interfaces"})
    description = "switch: Linux bridge (plain L2)"
    graph_style = {"shape": "ellipse", "style": "filled", "fillcolor": "#d9f99d"}
