"""`nslab nf`: listing, rendering and argument errors (no root needed)."""

from __future__ import annotations

from nslab.cli import main


def test_nf_render_prints_the_ruleset(capsys):
    rc = main(
        [
            "nf",
            "render",
            "lb",
            "vip=100.0.0.45",
            "port=80",
            'backends=["100.0.0.40","100.0.0.41","100.0.0.42"]',
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "numgen inc mod 3 map { 0 : 100.0.0.40, 1 : 100.0.0.41, 2 : 100.0.0.42 }" in out


def test_nf_lists_elements_and_templates(capsys):
    assert main(["nf", "elements"]) == 0
    out = capsys.readouterr().out
    assert "ARPResponder" in out and "Search" in out
    # lab 1's graded logic is not part of the kit (it lives in labs/01-nfv/solution)
    assert "NAPT" not in out.split() and "HTTPInspector" not in out and "IPRewriter" not in out
    assert main(["nf", "templates"]) == 0
    assert "napt" in capsys.readouterr().out


def test_nf_errors_are_one_line(capsys):
    assert main(["nf", "render", "lb", "vip=1.2.3", "port=80", "backends=[]"]) == 1
    assert "vip='1.2.3' is not an IPv4 address" in capsys.readouterr().err
    assert main(["nf", "run", "/nonexistent.click"]) == 1
    assert "cannot read NF configuration" in capsys.readouterr().err
    assert main(["nf", "render", "lb", "oops"]) == 1
    assert "expected NAME=VALUE" in capsys.readouterr().err
