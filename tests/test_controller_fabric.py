"""nslab.controller.fabric: spanning tree, shortest paths and ECMP on small fabrics (no root)."""

from __future__ import annotations

import json
from collections import Counter, deque

import pytest

from nslab.controller.fabric import Fabric, ecmp_pick
from nslab.errors import NslabError


def leaf_spine(spines: int, leaves: int, hosts_per_leaf: int = 2) -> dict:
    """fabric.json for a leaf-spine: leaf port i (1..spines) goes to spine i,
    then the host ports; spine port j goes to leaf j."""
    sw: dict = {}
    for s in range(1, spines + 1):
        sw[f"sp{s}"] = {
            "dpid": s,
            "ports": {
                str(j): {"iface": f"eth{j}", "peer": f"lf{j}:eth{s}", "peer_role": "switch"}
                for j in range(1, leaves + 1)
            },
        }
    for j in range(1, leaves + 1):
        ports = {
            str(s): {"iface": f"eth{s}", "peer": f"sp{s}:eth{j}", "peer_role": "switch"}
            for s in range(1, spines + 1)
        }
        for h in range(hosts_per_leaf):
            no = spines + 1 + h
            ports[str(no)] = {"iface": f"eth{no}", "peer": f"h{j}{h}:eth0", "peer_role": "host"}
        sw[f"lf{j}"] = {"dpid": 100 + j, "ports": ports}
    return {"lab": "t", "switches": sw, "hosts": {}}


def flood_copies(fab: Fabric, dpid: int, in_port: int) -> tuple[Counter, int]:
    """Simulate a broadcast entering `dpid` on host port `in_port` and every
    switch applying flood_ports: copies delivered per (dpid, host port), and
    the number of inter-switch link crossings. Bounded: a loop would blow the cap."""
    delivered: Counter = Counter()
    crossings = 0
    queue = deque([(dpid, in_port)])
    while queue:
        crossings += 1
        assert crossings < 1000, "broadcast loops"
        node, port = queue.popleft()
        for out in fab.flood_ports(node, port):
            peer = fab.peer(node, out)
            if peer is None:
                delivered[(node, out)] += 1
            else:
                queue.append(peer)
    return delivered, crossings - 1


@pytest.mark.parametrize("spines,leaves", [(2, 2), (2, 4), (4, 3)])
def test_flood_reaches_every_host_port_once(spines: int, leaves: int) -> None:
    fab = Fabric.from_dict(leaf_spine(spines, leaves))
    all_host_ports = {(d, p) for d in fab.dpids for p in fab.host_ports(d)}
    for src in all_host_ports:
        delivered, crossings = flood_copies(fab, *src)
        assert set(delivered) == all_host_ports - {src}
        assert set(delivered.values()) == {1}
        # a spanning tree of n switches has n-1 links: each is crossed once
        assert crossings == spines + leaves - 1


def test_next_hops_and_paths_leaf_spine() -> None:
    fab = Fabric.from_dict(leaf_spine(2, 3))
    assert fab.host_ports(101) == [3, 4]
    assert fab.switch_ports(101) == [1, 2]
    assert fab.distance(101, 103) == 2
    assert fab.next_hops(101, 103) == [1, 2]  # both spines
    assert fab.next_hops(1, 103) == [3]  # spine 1 port 3 -> leaf 3
    assert fab.next_hops(101, 101) == []
    paths = fab.shortest_paths(101, 102)
    assert [[(h.dpid, h.port) for h in p] for p in paths] == [
        [(101, 1), (1, 2)],
        [(101, 2), (2, 2)],
    ]
    assert fab.shortest_paths(101, 101) == [[]]
    assert fab.is_host_port(101, 3) and not fab.is_host_port(101, 1)


def test_ecmp_pick_is_stable_and_spreads() -> None:
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(1, 17)]
    picks = Counter(ecmp_pick([1, 2], a, b) for a in macs for b in macs if a != b)
    assert picks[1] > 60 and picks[2] > 60  # 240 pairs, roughly even
    assert ecmp_pick([1, 2], macs[0], macs[1]) == ecmp_pick([1, 2], macs[0], macs[1])
    with pytest.raises(ValueError):
        ecmp_pick([], "x")


def test_unknown_peer_is_treated_as_edge() -> None:
    data = leaf_spine(1, 1)
    data["switches"]["lf1"]["ports"]["9"] = {"peer": "br0:eth1", "peer_role": "switch"}
    fab = Fabric.from_dict(data)
    assert 9 in fab.host_ports(101)
    assert fab.unresolved == ["lf1:eth9 -> br0:eth1"]


def test_linux_bridge_without_dpid_is_an_edge() -> None:
    data = leaf_spine(1, 1)
    data["switches"]["br0"] = {
        "dpid": None,
        "ports": {"1": {"peer": "lf1:eth9", "peer_role": "switch"}},
    }
    data["switches"]["lf1"]["ports"]["9"] = {"peer": "br0:eth1", "peer_role": "switch"}
    fab = Fabric.from_dict(data)
    assert fab.dpids == [1, 101]
    assert fab.is_host_port(101, 9)


def test_load_errors_name_file_and_key(tmp_path) -> None:
    bad = tmp_path / "fabric.json"
    bad.write_text('{"switches": {"s1": {"dpid": 1}}')  # truncated
    with pytest.raises(NslabError, match=r"fabric.json:1: not valid JSON"):
        Fabric.load(bad)
    bad.write_text(json.dumps({"switches": {"s1": {"dpid": "one"}}}))
    with pytest.raises(NslabError, match=r"switches\.s1\.dpid: must be a positive integer"):
        Fabric.load(bad)
    bad.write_text(json.dumps({"switches": {"s1": {"dpid": 1}, "s2": {"dpid": 1}}}))
    with pytest.raises(NslabError, match="also the dpid of s1"):
        Fabric.load(bad)
    with pytest.raises(NslabError, match="cannot read"):
        Fabric.load(tmp_path / "missing.json")


def test_from_env(tmp_path, monkeypatch) -> None:
    path = tmp_path / "fabric.json"
    path.write_text(json.dumps(leaf_spine(2, 2)))
    monkeypatch.delenv("NSLAB_FABRIC", raising=False)
    assert Fabric.from_env() is None
    monkeypatch.setenv("NSLAB_FABRIC", str(path))
    assert Fabric.from_env().dpids == [1, 2, 101, 102]


def test_attachments_and_the_switches_only_view() -> None:
    data = leaf_spine(2, 2)
    data["hosts"] = {
        "h10": {"interfaces": {"eth0": {"mac": "02:00:00:00:00:0A"}}},
        "h11": {"mac": "02:00:00:00:00:0b"},  # a file from before "interfaces"
        "h20": {"interfaces": {"eth0": {"mac": None}}},  # no MAC known: not placed
    }
    fab = Fabric.from_dict(data)
    assert fab.view == "full"
    assert {m: (h.dpid, h.port) for m, h in fab.attachments().items()} == {
        "02:00:00:00:00:0a": (101, 3),
        "02:00:00:00:00:0b": (101, 4),
    }
    # What lab 0's controller gets: no hosts, host ports without peers; the
    # flooding helpers still work, there is just nothing to route with.
    hidden = leaf_spine(2, 2)
    hidden["view"] = "switches-only"
    del hidden["hosts"]
    for sw in hidden["switches"].values():
        for port in sw["ports"].values():
            if port["peer_role"] == "host":
                del port["peer"]
    fab = Fabric.from_dict(hidden)
    assert fab.view == "switches-only" and fab.attachments() == {}
    assert fab.host_ports(101) == [3, 4] and fab.flood_ports(101, 3) == [1, 2, 4]
    hidden["view"] = "partial"
    with pytest.raises(NslabError, match="view: must be one of full, switches-only"):
        Fabric.from_dict(hidden)
    hidden["view"] = "full"
    hidden["switches"]["sp1"]["ports"]["1"].pop("peer")  # a switch port must name its peer
    with pytest.raises(NslabError, match=r"switches\.sp1\.ports\.1: needs \"peer\""):
        Fabric.from_dict(hidden)
