"""`nslab export --format containerlab`: the file passes containerlab's JSON
schema and loads back into the same model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nslab.cli import main
from nslab.topo import Topology, load
from nslab.topo.export import dump_containerlab

DATA = Path(__file__).parent / "data"
CLAB_EXAMPLE = DATA / "clab-bridges.clab.yml"


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft7Validator:
    # A copy of containerlab's schema (shared/reference/containerlab.schema.json),
    # kept in the repo so a CI clone has it. Its IPv4 patterns use \p{N}\p{L}
    # (zone ids like %eth0), which Python's `re` lacks: [^\W_] means the same.
    text = (DATA / "containerlab.schema.json").read_text()
    text = text.replace("[\\\\p{N}\\\\p{L}]", "[^\\\\W_]")
    assert "\\\\p{" not in text
    schema = json.loads(text)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def summary(topo: Topology) -> dict[str, Any]:
    """Everything of a model an engine acts on (origins and source left out)."""
    return {
        "name": topo.name,
        "controller": (topo.controller.app, topo.controller.port) if topo.controller else None,
        "nodes": {
            n.name: {
                "kind": n.kind,
                "ifaces": {
                    i.name: ([str(ip) for ip in i.ips], i.mac) for i in n.interfaces.values()
                },
                "gateway": str(n.gateway) if n.gateway else None,
                "dpid": n.dpid,
                "image": n.image,
                "exec": n.exec,
                "env": n.env,
                "labels": n.labels,
                "config": n.config,
            }
            for n in topo.nodes.values()
        },
        "links": [(str(lk.a), str(lk.b), lk.params.as_dict(), lk.config) for lk in topo.links],
    }


CASES = [
    ("nfv", {}),
    ("fat-tree", {"k": "4", "bw": "50"}),
    ("leaf-spine", {"oversubscription": "3"}),
    ("dumbbell", {"n": "2", "delay": "10ms", "max_queue": "100"}),
    ("default", {}),
    (str(CLAB_EXAMPLE), {}),
]


@pytest.mark.parametrize("ref,params", CASES, ids=[Path(c[0]).name for c in CASES])
def test_export_validates_and_round_trips(tmp_path, schema_validator, ref, params) -> None:
    topo = load(ref, params)
    text = dump_containerlab(topo)
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in schema_validator.iter_errors(yaml.safe_load(text))
    ]
    assert not errors, "\n".join(errors[:5])
    out = tmp_path / "exported.clab.yml"
    out.write_text(text)
    again = load(str(out))
    assert summary(again) == summary(topo)


def test_schema_copy_rejects_what_containerlab_rejects(schema_validator) -> None:
    # guards the test above: the schema copy really checks node and link keys
    bad = {
        "name": "x",
        "topology": {
            "nodes": {"a": {"kind": "linux", "dpid": 1}},
            "links": [{"endpoints": ["a:e"], "bw": 1}],
        },
    }
    assert len(list(schema_validator.iter_errors(bad))) == 2


def test_export_keeps_impairments_in_link_vars_and_extensions_in_labels() -> None:
    text = dump_containerlab(load("dumbbell", {"delay": "5ms", "bw": "20"}))
    doc = yaml.safe_load(text)
    bottleneck = doc["topology"]["links"][-1]
    assert bottleneck["vars"] == {"bw": 20, "delay": "5ms"}
    assert doc["topology"]["kinds"]["ovs-bridge"]["labels"] == {"nslab.controller": "fabric_router"}
    assert doc["topology"]["nodes"]["s2"]["labels"] == {"nslab.dpid": 2}


def test_round_trip_keeps_macs_multiple_addresses_and_unaddressed_hosts(tmp_path: Path) -> None:
    src = tmp_path / "x.yaml"
    src.write_text(
        "name: ttopo4\ntopology:\n  controller: {app: my_app, port: 6699}\n  nodes:\n"
        "    a: {gpus: 2, binds: ['/x:/y'], interfaces: {eth0: {ip: [10.1.0.1/24, 10.2.0.1/24], mac: '02:00:00:00:00:0a'}}}\n"
        "    b: {ip: none}\n    s: {kind: ovs-bridge, dpid: 0x10}\n"
        "  links:\n    - endpoints: [a:eth0, s:eth1]\n      loss: 1.5\n      jitter: 1ms\n      delay: 2ms\n"
        "    - endpoints: [b:eth0, s:eth2]\n"
    )
    topo = load(str(src))
    assert topo.nodes["b"].ips == [] and topo.nodes["s"].dpid == 16
    assert topo.nodes["a"].config == {"gpus": 2, "binds": ["/x:/y"]}
    out = tmp_path / "y.clab.yml"
    out.write_text(dump_containerlab(topo))
    assert summary(load(str(out))) == summary(topo)


def test_cli_export_writes_file_and_rendered_text(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ft.clab.yml"
    assert main(["export", "fat-tree", "-p", "k=2", "--name", "ttopo5", "-o", str(out)]) == 0
    topo = load(str(out))
    assert topo.name == "ttopo5" and len(topo.nodes) == 7
    assert main(["export", "fat-tree", "-p", "k=2", "--format", "rendered"]) == 0
    rendered = capsys.readouterr().out
    assert '- endpoints: ["h2:eth0", "e2:eth1"]' in rendered
    assert (
        main(["export", "fat-tree", "-p", "k=3"]) == 2
    )  # a TopologyError, printed without traceback
    assert "k must be an even number" in capsys.readouterr().err
    assert main(["export", "fat-tree", "-p", "k"]) == 1
    assert "not key=value" in capsys.readouterr().err


def test_cli_export_list_shows_topologies_and_parameters(capsys) -> None:
    assert main(["export", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("default", "fat-tree", "leaf-spine", "dumbbell", "nfv"):
        assert f"\n{name} " in f"\n{out}"
    assert "-p k=4  ports per switch" in out and "-p oversubscription=1" in out
