"""The generated parts of a lab's guide (labs/<id>/README.md), so that the
guide cannot drift from the lab:

- the points table, from the public checks' marks (collected by pytest with
  the grading plugin, as `nslab check` sees them);
- the hand-in list, from lab.yaml's `submit:`;
- the topology picture, labs/<id>/topology.svg, drawn by `nslab graph` from
  the lab's topology and parameters (labs without a topology have none).

    python -m nslab.labdocs            # regenerate every lab (what `make docs` runs)
    python -m nslab.labdocs --check    # exit 1 and say what is stale

Generated blocks sit between `<!-- nslab:NAME begin ... -->` and
`<!-- nslab:NAME end -->` lines; everything else in the guide is prose.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from nslab.labs import LabSpec, labs_root, list_labs, load_lab

SVG = "topology.svg"
_BLOCK = re.compile(r"(<!-- nslab:(\w+) begin[^>]*-->\n)(.*?)(<!-- nslab:\2 end -->)", re.S)


def public_checks(spec: LabSpec) -> list[dict]:
    """The checks `nslab check` runs (name, max_score), in their order."""
    with tempfile.TemporaryDirectory(prefix="nslab-docs-") as tmp:
        t = Path(tmp)
        cfg = {"lab_dir": str(spec.path), "visibility": "public", "results": str(t / "r.jsonl")}
        (t / "config.json").write_text(json.dumps(cfg))
        (t / "pytest.ini").write_text("[pytest]\naddopts =\n")
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-c", str(t / "pytest.ini")]
        cmd += ["--rootdir", str(spec.checks_dir), "-p", "nslab.grading.plugin"]
        cmd += ["-p", "no:cacheprovider", "--nslab-config", str(t / "config.json")]
        cmd.append(str(spec.checks_dir))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        r = subprocess.run(cmd, cwd=t, capture_output=True, text=True, env=env, timeout=120)
        collected = t / "collected.json"
        if not collected.exists():
            raise RuntimeError(f"{spec.checks_dir}: checks not collected:\n{r.stdout[-2000:]}")
        return [c for c in json.loads(collected.read_text()) if c["visibility"] == "visible"]


def points_table(spec: LabSpec) -> str:
    rows = ["| check | points |", "|---|---:|"]
    total = 0.0
    for c in public_checks(spec):
        pts = c["max_score"]
        total += pts
        rows.append(f"| {c['name']} | {pts:g}{' (not graded)' if pts == 0 else ''} |")
    rows.append(f"| **total of the public checks** | **{total:g}** |")
    return "\n".join(rows) + "\n"


def handin_list(spec: LabSpec) -> str:
    files = spec.submit or []
    if not files:
        return "Nothing to hand in: this lab has no `submit:` files.\n"
    return "".join(f"- `{f}`\n" for f in files)


def _dot(spec: LabSpec) -> str:
    from nslab.topo import load
    from nslab.topo.graph import to_dot

    return to_dot(load(spec.topology_path, dict(spec.params), lab_name=spec.name))


def dot_hash(spec: LabSpec) -> str:
    return hashlib.sha256(_dot(spec).encode()).hexdigest()[:16]


def write_svg(spec: LabSpec) -> Path | None:
    """labs/<id>/topology.svg, tagged with the hash of the graph it shows."""
    if spec.topology is None:
        return None
    from nslab.topo import load
    from nslab.topo.graph import render

    out = spec.path / SVG
    render(load(spec.topology_path, dict(spec.params), lab_name=spec.name), out)
    text = out.read_text()
    tag = f"<!-- nslab:graph {dot_hash(spec)} (made by `make docs`; do not edit) -->\n"
    head, sep, rest = text.partition("<svg")
    out.write_text(head + tag + sep + rest)
    return out


def svg_is_current(spec: LabSpec) -> bool:
    f = spec.path / SVG
    return f.is_file() and f"<!-- nslab:graph {dot_hash(spec)} " in f.read_text()


def blocks(spec: LabSpec) -> dict[str, str]:
    return {"points": points_table(spec), "handin": handin_list(spec)}


def render_readme(spec: LabSpec, text: str) -> str:
    """The guide with its generated blocks brought up to date."""
    fresh = blocks(spec)

    def sub(m: re.Match) -> str:
        name = m.group(2)
        body = fresh.get(name, m.group(3))
        return m.group(1) + body + m.group(4)

    return _BLOCK.sub(sub, text)


def missing_blocks(text: str) -> list[str]:
    have = {m.group(2) for m in _BLOCK.finditer(text)}
    return [b for b in ("points", "handin") if b not in have]


def update(spec: LabSpec, check: bool = False) -> list[str]:
    """Regenerate (or, with check, only report) the lab's generated parts."""
    stale = []
    readme = spec.path / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    for b in missing_blocks(text):
        stale.append(f"{readme}: no `<!-- nslab:{b} begin -->` ... `end` block")
    new = render_readme(spec, text)
    if new != text:
        stale.append(f"{readme}: generated blocks are out of date")
        if not check:
            readme.write_text(new)
    if spec.topology is not None and not svg_is_current(spec):
        stale.append(f"{spec.path / SVG}: does not show the lab's topology")
        if not check:
            write_svg(spec)
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nslab.labdocs", description=__doc__.split("\n")[0])
    ap.add_argument("labs", nargs="*", type=Path, help="lab folders (default: every lab)")
    ap.add_argument("--check", action="store_true", help="only report what is stale (exit 1)")
    args = ap.parse_args(argv)
    specs = [load_lab(p) for p in args.labs] if args.labs else list_labs(labs_root())
    stale = []
    for spec in specs:
        found = update(spec, check=args.check)
        stale += found
        if not args.check:
            print(f"{spec.id}: {'updated' if found else 'up to date'}")
    if args.check and stale:
        print("\n".join(stale) + "\nrun `make docs` to regenerate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
