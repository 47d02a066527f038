"""lab.yaml: the lab contract parser, its errors (file, line, key, fix) and lab discovery."""

from __future__ import annotations

import textwrap

import pytest
from grading_support import ECHO

from nslab.labs import LabError, find_lab, list_labs, load_lab


def write(tmp_path, text: str, name: str = "07-demo"):
    d = tmp_path / name
    d.mkdir()
    (d / "lab.yaml").write_text(textwrap.dedent(text))
    return d


def test_echo_lab_parses():
    spec = load_lab(ECHO)
    assert spec.id == "echo" and spec.name == "sq" and spec.topology is None
    assert spec.services[0].name == "app" and spec.services[0].port and spec.services[0].ready.port
    assert spec.check_timeout == 4 and spec.limits["nproc"] == 12 and spec.submit == ["app.py"]


def test_defaults_and_variants(tmp_path):
    d = write(
        tmp_path,
        """
        title: Demo
        topology: leaf-spine
        params: {leaves: 2}
        controller: app.py
        due: 2026-12-01
        variants:
          big: {params: {leaves: 4}}
          shown: {params: {spines: 3}, visibility: visible, weight: 0.5}
        """,
    )
    spec = load_lab(d)
    assert spec.name == "lab07" and spec.time_budget == 600 and spec.due.year == 2026
    big, shown = spec.variants
    assert big.params == {"leaves": 4} and big.visibility == "hidden"
    assert shown.params == {"leaves": 2, "spines": 3} and shown.weight == 0.5


def test_every_problem_is_reported_with_line_and_key(tmp_path):
    d = write(
        tmp_path,
        """
        title: Demo
        topolgy: leaf-spine
        time_budget: -3
        services:
          - name: app
            command: [python3, app.py]
            user: admin
            ready: {port: true}
        variants:
          x: {visibility: secret}
        """,
    )
    with pytest.raises(LabError) as e:
        load_lab(d)
    msg = str(e.value)
    f = d / "lab.yaml"
    assert f"{f}:3: topolgy: unknown key (did you mean 'topology'?)" in msg
    assert f"{f}:4: time_budget: must be a number > 0 (got -3)" in msg
    assert f"{f}:8: services.0.user: must be 'student'" in msg
    assert "services.0.ready.port: needs `port: auto` on the service" in msg
    assert f"{f}:11: variants.x.visibility: must be one of" in msg


def test_missing_title_and_bad_yaml(tmp_path):
    with pytest.raises(LabError, match="title: required"):
        load_lab(write(tmp_path, "name: ab\n"))
    with pytest.raises(LabError, match="not valid YAML"):
        load_lab(write(tmp_path, "title: [unclosed\n", name="08-bad"))


def test_find_lab_suggests_a_close_id(tmp_path, monkeypatch):
    write(tmp_path, "title: Demo\n")
    monkeypatch.setenv("NSLAB_LABS", str(tmp_path))
    assert [s.id for s in list_labs()] == ["07-demo"]
    assert find_lab("07-demo").title == "Demo"
    with pytest.raises(LabError, match="did you mean '07-demo'"):
        find_lab("07-dmeo")
