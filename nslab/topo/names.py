"""Names nslab gives to things in the root namespace, shared by validation and engine.

Switch and bridge ports live in the root namespace, where every lab on the
machine shares one flat list of interface names; prefixing them with the lab
name keeps two labs apart. Linux caps names at IFNAMSIZ-1 = 15 characters.
"""

from __future__ import annotations

import re

from nslab.topo.model import IFNAMSIZ

LAB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# containerlab allows '-' and '.' too; '.' and ':' would confuse endpoints and
# interface names, so nslab takes letters, digits, '_' and '-'.
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
IFACE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def root_ifname(lab: str, node: str, iface: str) -> str:
    """Name of switch/bridge port `node:iface` in the root namespace."""
    return f"{lab}-{node}-{iface}"


def bridge_name(lab: str, node: str) -> str:
    """Name of the OVS or Linux bridge of switch node `node`."""
    return f"{lab}-{node}"


def too_long(name: str) -> bool:
    return len(name) > IFNAMSIZ
