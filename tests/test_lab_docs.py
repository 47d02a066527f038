"""Every lab guide has the course's one shape and its generated parts are
current: the points table equals what the checks' marks give, the hand-in
list equals lab.yaml's `submit:`, and topology.svg shows the lab's topology
(`make docs` regenerates all three). Works for any lab folder under labs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nslab import labdocs
from nslab.labs import list_labs, load_lab

REPO = Path(__file__).resolve().parents[1]
LABS = list_labs(REPO / "labs")
SECTIONS = [
    "## Learning goals",
    "## Step 1: run the starter and see it fail",
    "## Hand-in",
    "## Points",
    "## How to debug",
    "## Troubleshooting",
    "## Cleanup",
]


@pytest.mark.parametrize("spec", LABS, ids=[s.id for s in LABS])
def test_guide_has_the_course_shape(spec):
    text = (spec.path / "README.md").read_text()
    missing = [h for h in SECTIONS if not re.search(rf"^{re.escape(h)}", text, re.M)]
    assert not missing, f"{spec.id}/README.md lacks the sections {missing}"
    assert "**Time:**" in text, f"{spec.id}/README.md: no time estimate (**Time:** ...)"
    for tool in ("tcpdump", "report.html"):
        assert tool in text, f"{spec.id}/README.md: the debugging help does not mention {tool}"
    assert "--out" in text, f"{spec.id}/README.md: no `nslab check --out DIR` for report.html"
    step1 = text[text.index("## Step 1") :].split("\n## ")[0]
    assert f"nslab check {spec.id}" in step1, f"{spec.id}: step 1 does not run the checks"
    if spec.topology is not None:
        assert "](topology.svg)" in text, f"{spec.id}/README.md does not show topology.svg"


@pytest.mark.parametrize("spec", LABS, ids=[s.id for s in LABS])
def test_generated_parts_are_current(spec):
    stale = labdocs.update(spec, check=True)
    assert not stale, "\n".join(stale) + "\nrun `make docs`"


@pytest.mark.parametrize("spec", LABS, ids=[s.id for s in LABS])
def test_handin_list_is_submit_and_table_adds_up(spec):
    text = (spec.path / "README.md").read_text()
    block = re.search(r"<!-- nslab:handin begin[^>]*-->\n(.*?)<!-- nslab:handin end", text, re.S)
    assert block, spec.id
    assert re.findall(r"^- `([^`]+)`$", block.group(1), re.M) == spec.submit
    table = re.search(r"<!-- nslab:points begin[^>]*-->\n(.*?)<!-- nslab:points end", text, re.S)
    rows = re.findall(r"^\| (?!\*\*)(.+?) \| (\d+(?:\.\d+)?)", table.group(1), re.M)
    total = re.search(r"\*\*total of the public checks\*\* \| \*\*([\d.]+)\*\*", table.group(1))
    assert rows and total and sum(float(p) for _, p in rows) == float(total.group(1))
    checks = labdocs.public_checks(spec)
    assert [n for n, _ in rows] == [c["name"] for c in checks]


def test_generator_sees_marks_and_flags_a_stale_guide(tmp_path):
    """The generator on a throwaway lab: points from the marks, hidden checks
    left out, and a changed mark makes the guide stale."""
    lab = tmp_path / "09-tiny"
    (lab / "checks").mkdir(parents=True)
    (lab / "lab.yaml").write_text("title: Tiny\nsubmit: [a.py, b.txt]\n")
    check = (
        "import pytest\n\n\n@pytest.mark.points(4)\ndef test_one():\n"
        '    """one thing works"""\n\n\n'
        '@pytest.mark.points(9)\n@pytest.mark.visibility("hidden")\ndef test_secret():\n'
        '    """secret"""\n'
    )
    (lab / "checks" / "test_t.py").write_text(check)
    (lab / "README.md").write_text(
        "# Tiny\n<!-- nslab:points begin -->\n<!-- nslab:points end -->\n"
        "<!-- nslab:handin begin -->\n<!-- nslab:handin end -->\n"
    )
    spec = load_lab(lab)
    assert labdocs.update(spec) != []  # written
    text = (lab / "README.md").read_text()
    assert "| one thing works | 4 |" in text and "secret" not in text
    assert "**total of the public checks** | **4**" in text and "- `b.txt`" in text
    assert labdocs.update(spec, check=True) == []
    (lab / "checks" / "test_t.py").write_text(check.replace("points(4)", "points(5)"))
    assert labdocs.update(spec, check=True)


def test_svg_staleness_follows_the_topology(tmp_path):
    spec = next(s for s in LABS if s.topology is not None)
    assert labdocs.svg_is_current(spec)
    other = load_lab(spec.path)
    changed = {k: v + 1 for k, v in spec.params.items() if isinstance(v, int) and v > 1}
    if not changed:
        pytest.skip(f"{spec.id} has no integer parameter to change")
    k, v = next(iter(changed.items()))
    other.params = {**spec.params, k: v}
    assert not labdocs.svg_is_current(other), "a different topology must make topology.svg stale"
