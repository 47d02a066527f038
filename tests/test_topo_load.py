"""Loading topologies: the shipped templates, the course's NFV topology, plain
containerlab files, precedence, auto-addressing and the search path."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest

from nslab.errors import TopologyError
from nslab.topo import bridge_name, list_topologies, load, root_ifname

DATA = Path(__file__).parent / "data"


def kinds_count(topo) -> Counter:
    return Counter(n.kind for n in topo.nodes.values())


def assert_complete(topo) -> None:
    """What the engine relies on: hosts addressed, OpenFlow switches with unique dpids."""
    dpids = [n.dpid for n in topo.nodes.values() if n.kind == "ovs-bridge"]
    assert None not in dpids and len(set(dpids)) == len(dpids)
    for link in topo.links:
        for end in link.endpoints:
            assert end.iface in topo.nodes[end.node].interfaces


def test_fat_tree_k4() -> None:
    topo = load("fat-tree")
    assert topo.name == "ft" and topo.params == {"k": 4, "bw": None}
    assert kinds_count(topo) == {"linux": 16, "ovs-bridge": 20}
    assert len(topo.links) == 48
    assert [n for n in topo.nodes if n.startswith("h")] == [f"h{i}" for i in range(1, 17)]
    assert sorted(n for n in topo.nodes if n[0] == "c") == ["c1", "c2", "c3", "c4"]
    assert topo.controller is not None and topo.controller.app == "fabric_router"
    # every core switch reaches every pod once; every switch uses k ports
    for name, node in topo.nodes.items():
        if node.kind == "ovs-bridge":
            assert len(node.interfaces) == 4, name
    assert topo.nodes["h1"].ip == ipaddress.ip_interface("10.0.0.1/8")
    assert topo.nodes["h16"].ip == ipaddress.ip_interface("10.0.0.16/8")
    assert_complete(topo)


@pytest.mark.parametrize("k", [2, 6, 8])
def test_fat_tree_counts(k: int) -> None:
    topo = load("fat-tree", {"k": str(k), "bw": "100"})
    h = k // 2
    assert kinds_count(topo) == {"linux": k * h * h, "ovs-bridge": h * h + 2 * k * h}
    assert len(topo.links) == 3 * k * h * h
    assert {lk.params.bw for lk in topo.links} == {100.0}
    assert_complete(topo)


def test_leaf_spine_counts_and_oversubscription() -> None:
    topo = load("leaf-spine")
    assert topo.name == "ls"
    assert kinds_count(topo) == {"ovs-bridge": 6, "linux": 8}
    assert len(topo.links) == 4 * 2 + 4 * 2
    topo = load(
        "leaf-spine",
        {
            "spines": "2",
            "leaves": "3",
            "hosts_per_leaf": "6",
            "host_bw": "100",
            "oversubscription": "3",
        },
    )
    assert kinds_count(topo) == {"ovs-bridge": 5, "linux": 18}
    up = [lk for lk in topo.links if lk.a.node.startswith("lf") and lk.b.node.startswith("sp")]
    down = [lk for lk in topo.links if lk.a.node.startswith("h")]
    assert len(up) == 6 and len(down) == 18
    for leaf in ("lf1", "lf2", "lf3"):
        cap_down = sum(lk.params.bw for lk in down if lk.b.node == leaf)
        cap_up = sum(lk.params.bw for lk in up if lk.a.node == leaf)
        assert cap_down == 600 and cap_up == pytest.approx(600 / 3)
    assert {lk.params.bw for lk in up} == {100.0}
    assert topo.nodes["h18"].interfaces["eth0"] and "eth7" in topo.nodes["lf3"].interfaces
    assert_complete(topo)


def test_dumbbell() -> None:
    topo = load("dumbbell", {"n": "3", "bw": "5", "delay": "20ms"})
    assert topo.name == "db" and kinds_count(topo) == {"linux": 6, "ovs-bridge": 2}
    (neck,) = [lk for lk in topo.links if lk.a.node == "s1" and lk.b.node == "s2"]
    assert neck.params.bw == 5 and neck.params.delay == "20ms"
    assert [lk.b.node for lk in topo.links[:6]] == ["s1"] * 3 + ["s2"] * 3


def test_default_demo_topology() -> None:
    topo = load("default")
    assert topo.name == "dc" and kinds_count(topo) == {"linux": 4, "ovs-bridge": 3}
    assert sorted(lk.params.bw for lk in topo.links if lk.params.bw) == [100.0, 100.0]


def test_nfv_exact_names_and_addresses() -> None:
    topo = load("nfv")
    assert topo.name == "nfv"
    addrs = {n.name: [str(ip) for ip in n.ips] for n in topo.nodes.values()}
    assert addrs == {
        "h1": ["10.0.0.50/24"],
        "h2": ["10.0.0.51/24"],
        "sw1": [],
        "napt": ["10.0.0.1/24", "100.0.0.1/24"],
        "sw2": [],
        "ids": [],
        "insp": ["100.0.0.30/24"],
        "lb1": [],
        "sw3": [],
        "llm1": ["100.0.0.40/24"],
        "llm2": ["100.0.0.41/24"],
        "llm3": ["100.0.0.42/24"],
    }
    assert [str(ip) for ip in topo.nodes["napt"].interfaces["eth1"].ips] == ["100.0.0.1/24"]
    assert {n: topo.nodes[n].dpid for n in ("sw1", "sw2", "sw3")} == {"sw1": 1, "sw2": 2, "sw3": 3}
    assert {n: str(topo.nodes[n].gateway) for n in ("h1", "h2")} == {
        "h1": "10.0.0.1",
        "h2": "10.0.0.1",
    }
    assert all(str(topo.nodes[f"llm{i}"].gateway) == "100.0.0.1" for i in (1, 2, 3))
    chain = [(str(lk.a), str(lk.b)) for lk in topo.links]
    assert ("napt:eth1", "sw2:eth1") in chain and ("ids:eth1", "lb1:eth0") in chain
    assert ("ids:eth2", "insp:eth0") in chain and ("lb1:eth1", "sw3:eth1") in chain
    assert kinds_count(topo) == {"linux": 9, "ovs-bridge": 3}


def test_plain_containerlab_file_loads_as_is() -> None:
    topo = load(str(DATA / "clab-bridges.clab.yml"))
    assert topo.name == "br01"
    assert kinds_count(topo) == {"bridge": 1, "ovs-bridge": 1, "linux": 3}
    srv1 = topo.nodes["srv1"]
    assert srv1.image == "ghcr.io/hellt/network-multitool:latest"  # from topology.kinds.linux
    assert srv1.env == {"TZ": "UTC", "HTTP_PORT": "8080"}  # defaults merged with kinds
    assert srv1.labels == {"role": "server"} and srv1.exec == [
        "ip addr add 192.168.10.11/24 dev eth1"
    ]
    assert srv1.config == {"mgmt-ipv4": "172.20.20.11", "binds": ["./configs/srv1:/config"]}
    assert topo.nodes["client1"].image == "alpine:3.19"  # node beats kinds
    assert topo.nodes["client1"].config == {"cmd": "sleep infinity", "ports": ["8080:80"]}
    assert topo.nodes["client1"].interfaces["eth1"].mac == "02:00:00:aa:00:01"  # extended link form
    assert list(topo.nodes["ovs0"].interfaces) == ["ovsp1", "ovsp2"]
    assert topo.nodes["br0"].dpid is None and topo.nodes["ovs0"].dpid == 1
    assert topo.links[2].config == {"mtu": 1500}
    assert root_ifname(topo.name, "ovs0", "ovsp1") == "br01-ovs0-ovsp1"
    assert bridge_name(topo.name, "br0") == "br01-br0"


def test_precedence_anchors_auto_addresses_and_dpids(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        """\
name: ttopo6
topology:
  subnet: 192.168.0.0/24
  controller: simple_app
  defaults: {kind: ovs-bridge, env: {A: "0", B: "0"}}
  kinds:
    linux: {image: img:kind, env: {B: "2"}}
  nodes:
    h1: &host {kind: linux, env: {A: "1"}, image: img:node}
    h2: {<<: *host, ip: 192.168.0.1/24, image: img:h2}
    h3: *host
    h4: {kind: linux}
    s1: {dpid: 1}
    s2: {}
    s3: {dpid: 2}
    s4: {}
  links:
    - endpoints: [h1:eth0, s1:eth1]
    - endpoints: [h2:eth0, s1:eth2]
    - endpoints: [h3:eth0, s2:eth1]
    - endpoints: [h4:eth3, s2:eth2]
    - endpoints: [s3:eth1, s4:eth1]
"""
    )
    topo = load(str(path))
    h1, h2, h3, h4 = (topo.nodes[n] for n in ("h1", "h2", "h3", "h4"))
    assert h1.kind == "linux" and h1.image == "img:node" and h3.image == "img:node"
    assert h2.image == "img:h2" and h4.image == "img:kind"  # node > kinds
    assert h1.env == {"A": "1", "B": "2"} and h4.env == {"A": "0", "B": "2"}  # maps merged
    assert topo.nodes["s2"].env == {"A": "0", "B": "0"} and topo.nodes["s2"].kind == "ovs-bridge"
    assert str(h2.ip) == "192.168.0.1/24"
    # auto addresses in file order from `subnet`, skipping the explicit .1;
    # a host without eth0 gets it on its first linked interface
    assert str(h1.ip) == "192.168.0.2/24" and str(h3.ip) == "192.168.0.3/24"
    assert [str(ip) for ip in h4.interfaces["eth3"].ips] == ["192.168.0.4/24"]
    assert [topo.nodes[s].dpid for s in ("s1", "s2", "s3", "s4")] == [1, 3, 2, 4]
    assert topo.controller.app == "simple_app" and topo.controller.port is None


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: ttopo6\nx-common: 1\ntopology:\n  nodes: {a: {}}\n")
    with pytest.raises(
        TopologyError, match=r"x.yaml:2: x-common: unknown top-level key 'x-common'"
    ):
        load(str(path))


def test_list_topologies_and_search_path(tmp_path: Path, monkeypatch) -> None:
    names = {name: desc for name, _, desc in list_topologies()}
    assert {"fat-tree", "leaf-spine", "dumbbell", "nfv", "default"} <= set(names)
    assert all(names[n] for n in ("fat-tree", "leaf-spine", "dumbbell", "nfv", "default"))
    extra = tmp_path / "mine"
    extra.mkdir()
    (extra / "ttopo-tiny.yaml").write_text(
        "# Two hosts on a wire.\nname: ttopo7\ntopology:\n  nodes: {a: {}, b: {}}\n  links:\n    - endpoints: [a:eth0, b:eth0]\n"
    )
    (extra / "nfv.yaml").write_text(
        "# shadows the shipped one\nname: ttopo8\ntopology:\n  nodes: {a: {}}\n"
    )
    monkeypatch.setenv("NSLAB_TOPOLOGIES", str(extra))
    listed = {name: (path, desc) for name, path, desc in list_topologies()}
    assert listed["ttopo-tiny"] == (extra / "ttopo-tiny.yaml", "Two hosts on a wire.")
    assert load("nfv").name == "ttopo8"  # $NSLAB_TOPOLOGIES comes first
    topo = load("ttopo-tiny", lab_name="ttopo9")
    assert topo.name == "ttopo9" and [str(ip) for ip in topo.nodes["b"].ips] == ["10.0.0.2/8"]


def test_the_documented_example_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "topology-format.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(example)
    topo = load(str(path))
    assert topo.controller.port == 6653 and topo.nodes["ids"].ips == []
    assert topo.links[0].params.as_dict() == {
        "bw": 100.0,
        "delay": "5ms",
        "jitter": "1ms",
        "loss": 0.1,
        "max_queue": 1000,
    }


def test_controller_fabric_view(tmp_path: Path) -> None:
    """`controller: {fabric: switches-only}` tells the engine to hide hosts from
    the controller's fabric.json (lab 0); a wrong value names file, line and key."""
    path = tmp_path / "v.yaml"
    body = "  nodes: {s1: {kind: ovs-bridge}, h1: {}}\n  links: [{endpoints: [h1:eth0, s1:eth1]}]\n"
    path.write_text(
        "name: ttopo7\ntopology:\n  controller: {app: a.py, fabric: switches-only}\n" + body
    )
    assert load(str(path)).controller.fabric == "switches-only"
    path.write_text("name: ttopo7\ntopology:\n  controller: {app: a.py}\n" + body)
    assert load(str(path)).controller.fabric == "full"
    path.write_text("name: ttopo7\ntopology:\n  controller: {app: a.py, fabric: hosts}\n" + body)
    with pytest.raises(TopologyError, match=r"v.yaml:3: .*fabric must be full or switches-only"):
        load(str(path))
    from nslab.labs import labs_root

    lab0 = load(str(labs_root() / "00-sdn-warmup" / "topology.yaml.j2"))
    assert lab0.controller.fabric == "switches-only"
    # `nslab export` keeps it as a label, and loading the export restores it
    from nslab.topo.export import dump_containerlab

    exported = tmp_path / "lab0.clab.yaml"
    exported.write_text(dump_containerlab(lab0))
    assert load(str(exported)).controller.fabric == "switches-only"
