"""What every stage of building a topology from YAML shares.

The stages (nodes.py, links.py, addresses.py, driven by builder.py) read one
section each. They record problems instead of raising, so the user sees all of
them at once, and they note where each value was written (`origins`), so that
later checks (validate.py) can name its exact line.
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from nslab.problems import Problems
from nslab.topo.model import Origin, Topology
from nslab.yamlsrc import LList, LMap

# Labels that carry nslab settings in exported containerlab files (see export.py).
LABEL_PREFIX = "nslab."
NO_ADDRESS = "none"  # `ip: none`: a host that must stay without an address


@dataclass
class Built:
    """A topology plus where each of its values was written."""

    topo: Topology
    origins: dict[str, Origin] = field(default_factory=dict)

    def at(self, key: str, fallback: Origin) -> Origin:
        return self.origins.get(key, fallback)


@dataclass
class Pending:
    """Interface settings (ip, mac) that wait until every link has made its interfaces."""

    node: str
    iface: str
    settings: dict[str, Any]
    origin: Origin


class BuildContext:
    """The file being read, the problems found so far and the origins of values."""

    def __init__(self, file: str):
        self.file = file
        self.problems = Problems()
        self.origins: dict[str, Origin] = {}
        self.pending: list[Pending] = []
        self.used_ips: set[ipaddress.IPv4Address] = set()
        self.no_address: set[str] = set()  # hosts written with `ip: none`

    def origin(self, container: Any, key: Any, path: str) -> Origin:
        """Where `container[key]` was written, named by the dotted `path`."""
        line = None
        if isinstance(container, LMap):
            line = container.line_of(key)
        elif isinstance(container, LList) and isinstance(key, int):
            line = container.line_of(key)
        return Origin(self.file, line, path)

    def bad(self, origin: Origin, what: str, fix: str = "") -> None:
        self.problems.add(origin, what, fix)

    def mapping(self, value: Any, origin: Origin, what: str) -> LMap | None:
        """`value` if it is a mapping; None (and a problem unless it is empty) otherwise."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self.bad(
                origin, f"{what} must be a mapping, got {show(value)}", "write `key: value` lines"
            )
            return None
        return value

    def unknown_keys(self, mapping: LMap, allowed: Any, path: str, what: str, listing: str) -> None:
        """A problem for each key of `mapping` not in `allowed`, with a close
        match when there is one. `path` is the mapping's dotted key ("" at the top)."""
        for key in mapping:
            if key not in allowed:
                self.bad(
                    self.origin(mapping, key, f"{path}.{key}" if path else str(key)),
                    f"unknown {what} '{key}'",
                    f"{fix_hint(key, allowed)}{listing}",
                )

    def wait_for_link(self, node: str, iface: str, settings: dict[str, Any], o: Origin) -> None:
        """Apply `settings` to node:iface once the links have made the interfaces."""
        self.pending.append(Pending(node, iface, settings, o))


def fix_hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def show(value: Any) -> str:
    """A value as an error message names it."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if value is None:
        return "nothing"
    return repr(value)


def keys(names: Any) -> str:
    return ", ".join(sorted(names)) or "(none)"


def first_iface(node: Any) -> str:
    """The interface a node-level `ip` goes on: eth0, else the first linked one."""
    return "eth0" if "eth0" in node.interfaces else next(iter(node.interfaces))
