"""Find, render, parse, build and validate a topology file.

    from nslab.topo import load
    topo = load("fat-tree", params={"k": "4"})

Nothing here touches the host: a bad file fails with every problem listed
before an engine creates anything.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from nslab import REPO_ROOT
from nslab.errors import NslabError, TopologyError
from nslab.topo import template
from nslab.topo.builder import Built, build
from nslab.topo.model import Topology
from nslab.topo.validate import check
from nslab.yamlsrc import YamlError, parse

SUFFIXES = (".yaml.j2", ".yml.j2", ".clab.yml", ".clab.yaml", ".yaml", ".yml")
ENV_VAR = "NSLAB_TOPOLOGIES"


def search_dirs() -> list[Path]:
    """Where topology names are looked up: $NSLAB_TOPOLOGIES (':'-separated), then
    the repository's topologies/ folder (checkout or editable install)."""
    dirs = [Path(d) for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    for cand in (REPO_ROOT / "topologies", Path(sys.prefix) / "share" / "nslab" / "topologies"):
        if cand.is_dir() and cand not in dirs:
            dirs.append(cand)
    return dirs


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_topologies() -> list[tuple[str, Path, str]]:
    """(name, path, description) of every topology in the search dirs; the first
    directory that has a name wins."""
    seen: dict[str, tuple[str, Path, str]] = {}
    for d in search_dirs():
        for path in sorted(d.iterdir()):
            if not path.is_file() or not path.name.endswith(SUFFIXES):
                continue
            name = _stem(path)
            if name not in seen:
                seen[name] = (name, path, describe_file(path))
    return sorted(seen.values())


def describe_file(path: Path) -> str:
    """A template's header description, or a YAML file's leading comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    if template.is_template(path):
        try:
            return template.read_header(path, text).description
        except TopologyError:
            return ""
    lines = []  # the first paragraph of the leading comment
    for line in text.splitlines():
        words = line.lstrip("#").strip()
        if not line.startswith("#") or (not words and lines):
            break
        if words:
            lines.append(words)
    return " ".join(lines)


def find(ref: str | os.PathLike[str]) -> Path:
    """The file `ref` names: a path, or a name in the search dirs."""
    ref = os.fspath(ref)
    path = Path(ref)
    if path.is_file():
        return path
    if os.sep not in ref and not ref.endswith(SUFFIXES):
        for d in search_dirs():
            for suffix in SUFFIXES:
                cand = d / f"{ref}{suffix}"
                if cand.is_file():
                    return cand
    names = ", ".join(n for n, _, _ in list_topologies()) or "none"
    raise NslabError(
        f"topology '{ref}' not found — give a file path or one of: {names} "
        f"(searched {', '.join(str(d) for d in search_dirs())}; add folders with ${ENV_VAR})"
    )


def render(ref: str, params: dict[str, str] | None = None) -> tuple[Path, str, dict[str, Any]]:
    """(path, YAML text, effective parameters) of `ref`, rendering templates."""
    path = find(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NslabError(f"{path}: cannot read: {exc}") from None
    if template.is_template(path):
        rendered, values = template.render(path, text, params)
        return path, rendered, values
    if params:
        raise NslabError(
            f"{path}: is not a template, so it takes no parameters (got {', '.join(params)}) — "
            "drop the -p options, or use a *.yaml.j2 template"
        )
    return path, text, {}


def load_text(
    text: str,
    file: str = "<memory>",
    lab_name: str | None = None,
    default_name: str = "lab",
) -> Built:
    """Parse, build and validate YAML text; raise TopologyError listing every problem."""
    try:
        raw = parse(text)
    except YamlError as exc:
        raise TopologyError([str(exc.as_problem(file))]) from None
    built, problems = build(raw, file, lab_name=lab_name, default_name=default_name)
    check(built, problems)
    if problems:
        raise TopologyError(problems.messages())
    return built


def load(ref: str, params: dict[str, str] | None = None, lab_name: str | None = None) -> Topology:
    """Load topology `ref` (a path, or a name in topologies/) into a validated model.

    `params` fill a template's parameters (strings that look numeric become
    numbers); `lab_name` overrides the file's `name`."""
    path, text, values = render(ref, params)
    label = str(path)
    if template.is_template(path):
        label = f"{path} (template rendered with {template.describe(values)})"
    default = re.sub(r"[^a-z0-9-]", "-", _stem(path).lower()).strip("-") or "lab"
    built = load_text(text, file=label, lab_name=lab_name, default_name=default)
    topo = built.topo
    topo.source = str(path)
    topo.params = values
    return topo


def parse_params(items: list[str] | None) -> dict[str, str]:
    """`-p k=v` options as a dict; a clear error for anything else."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NslabError(f"parameter '{item}' is not key=value — write e.g. -p k=4")
        out[key.strip()] = value.strip()
    return out
