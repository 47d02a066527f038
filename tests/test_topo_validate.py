"""Every validation case: the error names file, line and key, says how to fix it,
and nothing is created on the host (validation runs before any engine).

Each case is a small topology file; the line marked `# <-` is where the error
must point. Lab names carry the prefix `ttopo` so the host check can tell our
names from other tests' running concurrently.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nslab.errors import NslabError, TopologyError
from nslab.topo import load

HOSTS = """\
name: ttopo1
topology:
  nodes:
    h1: {kind: linux}
    h2: {kind: linux}
    s1: {kind: ovs-bridge}
  links:
    - endpoints: ["h1:eth0", "s1:eth1"]
    - endpoints: ["h2:eth0", "s1:eth2"]
"""


def link_case(extra: str) -> str:
    """HOSTS with extra lines under the first link (marked by the caller)."""
    return HOSTS.replace('"s1:eth1"]\n', '"s1:eth1"]\n' + extra, 1)


# (id, file text, key path, words the message must contain)
CASES = [
    (
        "yaml-syntax",
        "name: ttopo1\ntopology:\n  nodes: [h1, {kind: linux}\n  links: []  # <-\n",
        "",
        "YAML syntax error",
    ),
    ("yaml-tab", "name: ttopo1\ntopology:\n\tnodes: {}  # <-\n", "", "has a tab"),
    ("missing-topology", "name: ttopo1  # <-\nnodes: {h1: {}}\n", "topology", "missing `topology`"),
    (
        "missing-nodes",
        "name: ttopo1\ntopology:  # <-\n  links: []\n",
        "topology.nodes",
        "missing `nodes`",
    ),
    (
        "unknown-kind",
        HOSTS.replace("s1: {kind: ovs-bridge}", "s1: {kind: router}  # <-"),
        "topology.nodes.s1.kind",
        "unknown kind 'router'",
    ),
    (
        "link-to-unknown-node",
        HOSTS.replace('["h2:eth0", "s1:eth2"]', '["h2:eth0", "s9:eth2"]  # <-'),
        "topology.links[1].endpoints[1]",
        "unknown node 's9'",
    ),
    (
        "malformed-endpoint",
        HOSTS.replace('["h2:eth0", "s1:eth2"]', '["h2-eth0", "s1:eth2"]  # <-'),
        "topology.links[1].endpoints[0]",
        "malformed endpoint 'h2-eth0'",
    ),
    (
        "interface-used-twice",
        HOSTS.replace('["h2:eth0", "s1:eth2"]', '["h2:eth0", "s1:eth1"]  # <-'),
        "topology.links[1].endpoints[1]",
        "s1:eth1 is used by two links",
    ),
    (
        "unknown-interface",
        HOSTS.replace(
            "h1: {kind: linux}", "h1:\n      interfaces:\n        eth7: {ip: 10.1.0.1/24}  # <-"
        ),
        "topology.nodes.h1.interfaces.eth7",
        "unknown interface 'eth7'",
    ),
    (
        "duplicate-node",
        HOSTS.replace("h2: {kind: linux}", "h1: {kind: linux}  # <-"),
        "topology.nodes.h1",
        "duplicate key 'h1'",
    ),
    (
        "bad-node-name",
        HOSTS.replace("h2: {kind: linux}", "h/2: {kind: linux}  # <-").replace('"h2:', '"h/2:'),
        "topology.nodes.h/2",
        "node name 'h/2'",
    ),
    (
        "bad-cidr",
        HOSTS.replace("h1: {kind: linux}", "h1: {kind: linux, ip: 10.0.0.300/24}  # <-"),
        "topology.nodes.h1.ip",
        "bad CIDR",
    ),
    (
        "address-clash",
        HOSTS.replace("h1: {kind: linux}", "h1: {ip: 10.0.0.7/24}").replace(
            "h2: {kind: linux}", "h2: {ip: 10.0.0.7/24}  # <-"
        ),
        "topology.nodes.h2.ip",
        "address 10.0.0.7 is used by h1:eth0, h2:eth0",
    ),
    (
        "gateway-outside",
        HOSTS.replace(
            "h1: {kind: linux}", "h1:\n      ip: 10.0.0.7/24\n      gateway: 10.0.1.1  # <-"
        ),
        "topology.nodes.h1.gateway",
        "gateway 10.0.1.1 is not in any subnet of h1 (10.0.0.0/24)",
    ),
    (
        "switch-ifname-too-long",
        HOSTS.replace('"s1:eth2"]', '"s1:eth22222"]  # <-'),
        "topology.links[1].endpoints[1]",
        "'ttopo1-s1-eth22222' (18 chars",
    ),
    (
        "bridge-name-too-long",
        HOSTS.replace("s1: {kind: ovs-bridge}", "switch_nr_1: {kind: bridge}  # <-").replace(
            '"s1:', '"switch_nr_1:'
        ),
        "topology.nodes.switch_nr_1",
        "bridge name 'ttopo1-switch_nr_1' (18 chars, from lab name 'ttopo1')",
    ),
    (
        "host-ifname-too-long",
        HOSTS.replace('["h1:eth0", "s1:eth1"]', '["h1:eth0-uplink-main", "s1:eth1"]  # <-'),
        "topology.links[0].endpoints[0]",
        "'eth0-uplink-main' is longer than Linux's 15",
    ),
    (
        "bad-lab-name",
        HOSTS.replace("name: ttopo1", "name: Ttopo_1  # <-"),
        "name",
        "lab name 'Ttopo_1'",
    ),
    (
        "bw-zero",
        link_case("      bw: 0  # <-\n"),
        "topology.links[0].bw",
        "bw 0 Mbit/s is out of range",
    ),
    ("bw-absurd", link_case("      bw: 1e9  # <-\n"), "topology.links[0].bw", "out of range"),
    (
        "bw-not-number",
        link_case("      bw: fast  # <-\n"),
        "topology.links[0].bw",
        "must be a number",
    ),
    ("loss-range", link_case("      loss: 101  # <-\n"), "topology.links[0].loss", "loss 101"),
    (
        "loss-negative",
        link_case("      vars: {loss: -1}  # <-\n"),
        "topology.links[0].vars.loss",
        "loss -1",
    ),
    (
        "delay-no-unit",
        link_case("      delay: 5  # <-\n"),
        "topology.links[0].delay",
        "not a tc time",
    ),
    (
        "delay-huge",
        link_case("      delay: 11s  # <-\n"),
        "topology.links[0].delay",
        "more than 10 s",
    ),
    (
        "max-queue",
        link_case("      max_queue: 0  # <-\n"),
        "topology.links[0].max_queue",
        "max_queue 0",
    ),
    (
        "unknown-node-key",
        HOSTS.replace("h1: {kind: linux}", "h1: {kind: linux, gatway: 10.0.0.1}  # <-"),
        "topology.nodes.h1.gatway",
        "did you mean 'gateway'",
    ),
    (
        "key-not-for-kind",
        HOSTS.replace("s1: {kind: ovs-bridge}", "s1: {kind: ovs-bridge, gateway: 10.0.0.1}  # <-"),
        "topology.nodes.s1.gateway",
        "'gateway' does not apply to kind ovs-bridge",
    ),
]


def host_names() -> set[str]:
    """Names on the host that one of our (ttopo-prefixed) labs could create."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
    if shutil.which("ovs-vsctl"):
        br = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True)
        if br.returncode == 0:
            names |= set(br.stdout.split())
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names |= {line.split()[0] for line in netns.splitlines() if line.strip()}
    return {n for n in names if "ttopo" in n}


def marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if "# <-" in line]
    assert len(lines) == 1, "a case marks exactly one line"
    return lines[0]


@pytest.mark.parametrize("case,text,key,words", CASES, ids=[c[0] for c in CASES])
def test_validation_case(tmp_path: Path, case: str, text: str, key: str, words: str) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(text)
    before = host_names()
    with pytest.raises(TopologyError) as err:
        load(str(path))
    assert host_names() == before, "validation must not create anything on the host"
    where = f"{path}:{marked_line(text)}: {key}"
    matching = [p for p in err.value.problems if p.startswith(where)]
    assert matching, f"no problem at {where!r}; got:\n" + "\n".join(err.value.problems)
    msg = matching[0]
    assert words in msg, msg
    assert " — " in msg and msg.split(" — ", 1)[1].strip(), f"no fix hint in: {msg}"


def test_all_problems_reported_together(tmp_path: Path) -> None:
    text = (
        HOSTS.replace("s1: {kind: ovs-bridge}", "s1: {kind: router}")
        .replace('["h2:eth0", "s1:eth2"]', '["h2:eth0", "s9:eth2"]')
        .replace('"s1:eth1"]\n', '"s1:eth1"]\n      loss: 300\n', 1)
    )
    path = tmp_path / "many.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as err:
        load(str(path))
    text_all = str(err.value)
    assert len(err.value.problems) == 3, text_all
    for words in ("unknown kind 'router'", "unknown node 's9'", "loss 300"):
        assert words in text_all


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(HOSTS.replace("kind: ovs-bridge", "kind: ovs-brigde"))
    from nslab.kinds import all_kinds

    known = ", ".join(all_kinds())  # every registered kind, sorted
    assert {"bridge", "linux", "ovs-bridge"} <= set(all_kinds())
    with pytest.raises(TopologyError, match=rf"did you mean 'ovs-bridge'\? known kinds: {known}$"):
        load(str(path))


def test_long_names_suggest_shorter_lab_name(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(HOSTS)
    load(str(path))  # fine as ttopo1 ...
    with pytest.raises(TopologyError) as err:
        load(str(path), lab_name="ttopo-long-name")  # ... too long under a longer --name
    assert all("lab name 'ttopo-long-name'" in p and "--name" in p for p in err.value.problems)
    assert len(err.value.problems) == 3  # the bridge and its two ports


def test_template_errors_name_rendered_text_and_params(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml.j2"
    path.write_text(
        "{#\nparams:\n  n: 2\n#}\nname: ttopo2\ntopology:\n  nodes:\n"
        "{% for i in range(n) %}\n    h{{ i }}: {kind: linux}\n{% endfor %}\n"
        "    s1: {kind: ovs-bridge}\n  links:\n"
        '{% for i in range(n) %}\n    - endpoints: ["h{{ i }}:eth0", "s1:eth1"]\n{% endfor %}\n'
    )
    with pytest.raises(TopologyError) as err:
        load(str(path), params={"n": "3"})
    (msg,) = err.value.problems[:1]
    # rendered: 3 nodes on lines 4-6, s1 on 7, links on 9-11 -> second link is line 10
    assert msg.startswith(
        f"{path} (template rendered with n=3):10: topology.links[1].endpoints[1]"
    ), msg
    assert len(err.value.problems) == 2


def test_template_undefined_variable_names_template_line(tmp_path: Path) -> None:
    path = tmp_path / "u.yaml.j2"
    path.write_text("{#\nparams: {n: 2}\n#}\nname: ttopo3\ntopology:\n  nodes:\n    h{{ m }}: {}\n")
    with pytest.raises(TopologyError, match=rf"{path}:7: 'm' is undefined — declare it"):
        load(str(path))


def test_unknown_template_parameter_lists_known(tmp_path: Path) -> None:
    with pytest.raises(
        NslabError, match=r"unknown parameter 'kk' — this template takes: k \(default 4\)"
    ):
        load("fat-tree", params={"kk": "2"})


def test_template_rejects_bad_value() -> None:
    with pytest.raises(TopologyError, match=r"k must be an even number from 2 to 16, got 5"):
        load("fat-tree", params={"k": "5"})


def test_params_to_plain_file_is_an_error() -> None:
    with pytest.raises(NslabError, match="is not a template"):
        load("nfv", params={"k": "2"})


def test_unknown_topology_lists_available() -> None:
    with pytest.raises(NslabError, match=r"not found .*fat-tree.*nfv"):
        load("no-such-topology")


def test_container_host_settings_are_checked_by_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        HOSTS.replace(
            "h1: {kind: linux}",
            "h1: {kind: linux, image: nslab/base, binds: [data], gpus: -1}  # <-",
        )
    )
    with pytest.raises(TopologyError) as err:
        load(str(path))
    where = f"{path}:{marked_line(path.read_text())}: topology.nodes.h1"
    assert len(err.value.problems) == 2
    assert all(p.startswith(where) for p in err.value.problems), err.value.problems
    assert "'binds'" in err.value.problems[0] and "'gpus'" in err.value.problems[1]


def test_kind_keys_in_defaults_apply_only_to_kinds_that_take_them(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(HOSTS.replace("topology:\n", "topology:\n  defaults: {gpus: all}\n", 1))
    topo = load(str(path))
    assert topo.nodes["h1"].config == {"gpus": "all"} and topo.nodes["s1"].config == {}


def test_validate_works_on_a_topology_built_in_python() -> None:
    import ipaddress

    from nslab.topo import Endpoint, Interface, Link, LinkParams, Node, Topology
    from nslab.topo.validate import validate

    topo = Topology(name="ttopo10")
    topo.nodes["h1"] = Node("h1", "linux", gateway=ipaddress.IPv4Address("10.9.0.1"))
    topo.nodes["h1"].interfaces["eth0"] = Interface(
        "eth0", "h1", [ipaddress.IPv4Interface("10.0.0.1/24")]
    )
    topo.nodes["s1"] = Node("s1", "ovs-bridge", dpid=1)
    topo.nodes["s1"].interfaces["eth1"] = Interface("eth1", "s1")
    topo.links.append(Link(Endpoint("h1", "eth0"), Endpoint("s1", "eth1"), LinkParams(bw=-5)))
    topo.links.append(Link(Endpoint("h1", "eth0"), Endpoint("s2", "eth1")))
    with pytest.raises(TopologyError) as err:
        validate(topo)
    text = str(err.value)
    assert len(err.value.problems) == 4, text
    for words in ("bw -5", "unknown node 's2'", "h1:eth0 is used by two links", "gateway 10.9.0.1"):
        assert words in text
    topo.links[0].params.bw = 10
    del topo.links[1]
    topo.nodes["h1"].gateway = ipaddress.IPv4Address("10.0.0.254")
    validate(topo)  # now fine
