"""YAML with line numbers and duplicate-key detection: the one YAML source
tracker of nslab (topology files and lab.yaml both read through it).

PyYAML forgets where values came from and silently keeps the last of two
equal keys; both make errors useless ("a node is wrong" — which one?). This
loader builds ordinary dicts and lists that also remember the 1-based line of
every key and item, and collects duplicate keys instead of dropping them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from nslab.problems import Problem


class LMap(dict):
    """A mapping that remembers its own line and the line of each key."""

    line: int | None = None
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]  # (key, line, line of first occurrence)

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)


class LList(list):
    """A sequence that remembers its own line and the line of each item."""

    line: int | None = None
    item_lines: list[int]

    def line_of(self, index: int) -> int | None:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


@dataclass
class YamlProblem:
    line: int | None
    column: int | None
    message: str


# libyaml's parser when present (5x faster on a k=8 fat-tree); marks carry lines either way
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> LMap:
    explicit = sum(1 for knode, _ in node.value if knode.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
    merged = len(node.value) - explicit  # merged pairs come first; explicit ones may override
    out = LMap()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    out.duplicates = []
    seen: dict[Any, int] = {}  # explicit keys only: overriding a merged key is legal YAML
    for i, (knode, vnode) in enumerate(node.value):
        key = loader.construct_object(knode, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", knode.start_mark
            ) from None
        line = knode.start_mark.line + 1
        if i >= merged:
            if key in seen:
                out.duplicates.append((key, line, seen[key]))
            seen[key] = line
        out[key] = loader.construct_object(vnode, deep=True)
        out.key_lines[key] = line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> LList:
    out = LList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def parse(text: str) -> Any:
    """Parse YAML text into LMap/LList/scalars. Raises YamlError with line/column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or str(exc)
        if exc.context and exc.problem:
            what = f"{exc.context}, {exc.problem}"
        cm = exc.context_mark
        if cm is not None and mark is not None and cm.line != mark.line:
            what += f" (started at line {cm.line + 1})"
        lines = text.splitlines()
        if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]:
            what += "; this line has a tab: YAML indents with spaces only"
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise YamlError(YamlProblem(line, col, what)) from None
    except yaml.YAMLError as exc:
        raise YamlError(YamlProblem(None, None, str(exc))) from None


class YamlError(Exception):
    def __init__(self, problem: YamlProblem):
        self.problem = problem
        super().__init__(problem.message)

    def as_problem(self, file: str, what: str = "YAML syntax error") -> Problem:
        p = self.problem
        col = f" (column {p.column})" if p.column else ""
        return Problem(
            file, p.line, "", f"{what}{col}: {p.message}", "check indentation, colons and quotes"
        )


def duplicates(data: Any, path: str = "") -> list[tuple[str, int, int]]:
    """Every duplicate key in `data`: (dotted key path, line, first line)."""
    out: list[tuple[str, int, int]] = []
    if isinstance(data, LMap):
        for key, line, first in data.duplicates:
            out.append((join(path, key), line, first))
        for key, value in data.items():
            out.extend(duplicates(value, join(path, key)))
    elif isinstance(data, LList):
        for i, value in enumerate(data):
            out.extend(duplicates(value, f"{path}[{i}]"))
    return out


def duplicate_problems(data: Any, file: str) -> list[Problem]:
    """A problem for every duplicate key in `data`, at the later one."""
    return [
        Problem(
            file,
            line,
            path,
            f"duplicate key '{path.rsplit('.', 1)[-1]}' (first at line {first}); "
            "YAML keeps only the last one",
            "give every node/key a unique name, or merge the two",
        )
        for path, line, first in duplicates(data)
    ]


def line_at(data: Any, dotted: str) -> int | None:
    """The line of the key at `dotted` (e.g. "services.0.user": list items by
    index), or of the deepest part of it that exists (a missing key points at
    its parent)."""
    line = data.line if isinstance(data, (LMap, LList)) else None
    for part in dotted.split(".") if dotted else []:
        if isinstance(data, LMap):
            key = next((k for k in data if str(k) == part), _MISSING)
            if key is _MISSING:
                break
            line, data = data.line_of(key), data[key]
        elif isinstance(data, LList) and part.isdigit() and int(part) < len(data):
            line, data = data.line_of(int(part)), data[int(part)]
        else:
            break
    return line


_MISSING = object()


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def plain(value: Any) -> Any:
    """`value` with LMap/LList turned into plain dicts and lists (for the model,
    which is pickled and dumped)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
