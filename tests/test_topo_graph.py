"""`nslab graph`: a real Graphviz rendering of a topology."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nslab.cli import main
from nslab.errors import NslabError
from nslab.topo import graph as topo_graph
from nslab.topo import load

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz `dot` not installed (scripts/provision.sh installs it)",
)


@needs_dot
def test_graph_svg_has_every_node_and_link_labels(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nfv.svg"
    assert main(["graph", "nfv", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    root = ET.parse(out).getroot()  # well-formed SVG
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    topo = load("nfv")
    assert set(topo.nodes) <= texts
    assert {"10.0.0.50/24", "dpid 2", "ovs-bridge", "linux"} <= texts  # addresses, dpids, legend


@needs_dot
def test_graph_kinds_look_different_and_shaping_is_labelled(tmp_path: Path) -> None:
    topo = load("dumbbell", {"bw": "5", "delay": "10ms"})
    dot = topo_graph.to_dot(topo)
    assert 'shape="hexagon"' in dot and 'shape="box"' in dot
    assert 'label="5 Mbit/s\\n10ms"' in dot
    out = topo_graph.render(topo, tmp_path / "db.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_dot_text_needs_no_graphviz(tmp_path: Path) -> None:
    out = tmp_path / "ls.dot"
    assert main(["graph", "leaf-spine", "-p", "leaves=2", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith('graph "ls"')
    # upper tiers are drawn first (dot ranks tails above heads): spine -- leaf -- host
    assert '"sp1" -- "lf1"' in text and '"lf1" -- "h1"' in text
    assert '"lf1" -- "sp1"' not in text and '"h1" -- "lf1"' not in text


def test_graph_errors(tmp_path: Path, monkeypatch) -> None:
    topo = load("default")
    with pytest.raises(NslabError, match=r"unknown format 'jpeg' — use a file ending in .svg"):
        topo_graph.render(topo, tmp_path / "x.jpeg")
    # simulate a machine without Graphviz (it is installed here)
    monkeypatch.setattr(topo_graph.shutil, "which", lambda name: None)
    with pytest.raises(NslabError, match=r"Graphviz `dot` is not installed — install it"):
        topo_graph.render(topo, tmp_path / "x.svg")
