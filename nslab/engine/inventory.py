"""A snapshot of what exists on the host, for before/after comparisons.

Tests (and curious users) take one before `up` and one after `down`: they
must be equal. It lists what nslab could create: network namespaces (by
inode, named or not), root-namespace links, OVS bridges, qdiscs, iptables
rules, bridge sysctls, nslab-labelled processes, nslab cgroups and
containers.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from nslab import cgroup
from nslab.engine.teardown import labelled_pids

SYSCTLS = (
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/bridge/bridge-nf-call-arptables",
)


def _out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return ""


def netns_inodes() -> set[int]:
    """Every network namespace some process is in (plus named ones)."""
    inodes = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                inodes.add(os.stat(f"/proc/{entry.name}/ns/net").st_ino)
            except OSError:
                pass
    return inodes


def snapshot(include_netns: bool = True) -> dict[str, object]:
    links = sorted(
        line.split(":")[1].strip().split("@")[0]
        for line in _out(["ip", "-o", "link"]).splitlines()
        if ":" in line
    )
    snap: dict[str, object] = {
        "links": links,
        "named_netns": sorted(_out(["ip", "netns", "list"]).split()),
        "ovs_bridges": sorted(_out(["ovs-vsctl", "--timeout=10", "list-br"]).split()),
        "qdiscs": sorted(
            line for line in _out(["tc", "qdisc", "show"]).splitlines() if "noqueue" not in line
        ),
        "iptables": _out(["iptables-save"]).count("\n-A "),
        "sysctls": {
            k: Path("/proc/sys", k).read_text().strip()
            for k in SYSCTLS
            if Path("/proc/sys", k).exists()
        },
        "nslab_procs": sorted(labelled_pids(None)),
        "cgroups": sorted(cgroup.labs()),  # nslab.slice/<lab> groups
        "cgroup_procs": sorted(p for lab in cgroup.labs() for p in cgroup.pids(lab)),
        "containers": sorted(_out(["docker", "ps", "-aq", "--filter", "label=nslab.lab"]).split()),
    }
    if include_netns:
        snap["netns"] = sorted(netns_inodes())
    return snap


def diff(
    before: dict, after: dict, ignore: tuple[str, ...] = ()
) -> dict[str, tuple[object, object]]:
    """Keys whose value changed. `ignore` lists name prefixes of resources that
    others create concurrently (e.g. while developers run test suites side by
    side); keys that cannot be attributed by name are then skipped too. CI runs
    the suite alone and compares everything."""
    out = {}
    for k in before.keys() | after.keys():
        b, a = before.get(k), after.get(k)
        if ignore and k in ("netns", "containers", "nslab_procs", "cgroup_procs", "sysctls"):
            continue
        if ignore and isinstance(b, list) and isinstance(a, list):
            b = [x for x in b if not str(x).startswith(ignore) and "(id:" not in str(x)]
            a = [x for x in a if not str(x).startswith(ignore) and "(id:" not in str(x)]
            if ignore and k == "qdiscs":
                b = [x for x in b if not any(f"dev {p}" in x for p in ignore)]
                a = [x for x in a if not any(f"dev {p}" in x for p in ignore)]
        if b != a:
            out[k] = (b, a)
    return out
