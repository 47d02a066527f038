"""The modules of nslab/ import each other without a cycle.

The graph is built from the AST of every module under nslab/, without
importing anything. Every import of an nslab module counts: at the top of a
module, inside a function (a lazy import that closes a circle is still a
circle, it only moves the failure to run time), and under `if TYPE_CHECKING:`
(a circle of types is a circle of design). `from pkg import name` is an edge
to the module pkg.name when there is one, else to pkg. The implicit import of
a module's parent packages is not an edge: every submodule has it, so a
package whose __init__ re-exports its submodules would count as a cycle.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under nslab/."""
    out = {}
    for path in sorted((ROOT / "nslab").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


@functools.cache  # parsed once for all tests here
def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def known(name: str) -> str | None:  # the module itself, or the nearest package above
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            else:
                continue
            for t in targets:
                target = known(t) if t.split(".")[0] == "nslab" else None
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_of_every_form():
    graph = import_graph()
    assert "nslab.topo.loader" in graph["nslab.topo"]  # package __init__ re-export
    assert "nslab.topo.template" in graph["nslab.topo.loader"]  # from pkg import module
    assert "nslab.serving.pod" in graph["nslab.kinds.pod"]  # inside a function
    assert "nslab.grading.result" in graph["nslab.grading.outputs"]  # under TYPE_CHECKING


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nslab_has_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    detail = "\n".join(
        " <-> ".join(c) + "\n  " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c)
        for c in found
    )
    assert not found, (
        f"import cycles in nslab/ (break each, e.g. move a shared type out):\n{detail}"
    )
