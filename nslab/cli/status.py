"""nslab status [NAME] [--json]: what runs where."""

from __future__ import annotations

import argparse
import json

from nslab.engine import Lab, running_labs
from nslab.kinds import get as get_kind

VERB = "status"
HELP = "show running labs, or one lab's nodes, interfaces and addresses"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="lab name (default: every running lab)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def describe(lab: Lab) -> dict:
    nodes = {}
    for n in lab.topology.nodes.values():
        ifaces = {}
        for local, remote in lab.topology.neighbours(n.name):
            intf = n.interfaces.get(local.iface)
            ifaces[local.iface] = {
                "name": lab.ifname(n.name, local.iface),
                "peer": str(remote),
                "ips": [str(i) for i in intf.ips] if intf else [],
            }
        entry = {"kind": n.kind, "role": get_kind(n.kind).role, "interfaces": ifaces}
        if n.name in lab.state.hosts:
            entry["pid"] = lab.state.hosts[n.name]
        if get_kind(n.kind).root_namespace:
            entry["bridge"] = lab.bridge(n.name)
            if n.dpid is not None:
                entry["dpid"] = n.dpid
        if n.gateway:
            entry["gateway"] = str(n.gateway)
        nodes[n.name] = entry
    return {
        "name": lab.name,
        "status": lab.state.status
        if lab.alive()
        else "crashed (run `sudo nslab down` to clean up)",
        "topology": lab.state.topology,
        "params": lab.state.params,
        "controller_port": lab.controller_port,
        "degraded": lab.degraded,
        "nodes": nodes,
        "links": [
            {"endpoints": [str(link.a), str(link.b)], **link.params.as_dict()}
            for link in lab.topology.links
        ],
    }


def table(lab: Lab) -> str:
    d = describe(lab)
    rows = [f"lab {d['name']}: {d['status']}  (topology {d['topology']})"]
    if d["controller_port"]:
        rows.append(f"controller: tcp:127.0.0.1:{d['controller_port']}  log: {lab.controller_log}")
    rows.append(f"{'NODE':<10} {'KIND':<11} {'WHERE':<14} INTERFACES")
    for name, n in d["nodes"].items():
        where = f"pid {n['pid']}" if "pid" in n else f"br {n.get('bridge', '')}"
        ifs = ", ".join(
            f"{i}={'/'.join(v['ips']) or v['name']}->{v['peer']}"
            for i, v in n["interfaces"].items()
        )
        rows.append(f"{name:<10} {n['kind']:<11} {where:<14} {ifs}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    labs = [Lab.attach(args.name)] if args.name else running_labs()
    if args.json:
        out = describe(labs[0]) if args.name else [describe(lab) for lab in labs]
        print(json.dumps(out, indent=1))
    elif not labs:
        print("no lab is running")
    else:
        print("\n\n".join(table(lab) for lab in labs))
    return 0
