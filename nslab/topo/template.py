"""Parametric topologies: Jinja2 templates with a parameter header.

A template starts with a Jinja2 comment holding YAML: a description and the
parameters with their defaults (optionally with a help text):

    {#
    description: k-ary fat-tree
    params:
      k: {default: 4, help: "pods (even, >= 2)"}
      bw: 1000
    #}

Templates render with StrictUndefined (a typo is an error, not an empty
string) and may call `fail("message")` to reject a bad parameter value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from nslab.errors import NslabError, TopologyError

_HEADER_RE = re.compile(r"\A\s*\{#(.*?)#\}", re.S)


@dataclass
class Param:
    name: str
    default: Any
    help: str = ""


@dataclass
class Header:
    description: str = ""
    params: dict[str, Param] = field(default_factory=dict)


class _Fail(Exception):
    pass


def is_template(path: Path) -> bool:
    return path.name.endswith(".j2")


def read_header(path: Path, text: str) -> Header:
    """The description and parameters a template declares in its first comment."""
    m = _HEADER_RE.match(text)
    if not m:
        return Header()
    try:
        data = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        raise TopologyError(
            [
                f"{path}:1: params header: not YAML ({exc}) — write `params: {{k: 4}}` inside the leading {{# #}}"
            ]
        ) from None
    if not isinstance(data, dict):
        return Header()
    params: dict[str, Param] = {}
    for name, spec in (data.get("params") or {}).items():
        if isinstance(spec, dict) and "default" in spec:
            params[str(name)] = Param(str(name), spec["default"], str(spec.get("help", "")))
        else:
            params[str(name)] = Param(str(name), spec)
    return Header(str(data.get("description", "")).strip(), params)


def convert(value: str) -> Any:
    """'4' -> 4, '2.5' -> 2.5, anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(value)
        except (TypeError, ValueError):
            pass
    return value


def describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def render(path: Path, text: str, given: dict[str, str] | None) -> tuple[str, dict[str, Any]]:
    """Render template `path` with `given` parameters over its defaults."""
    header = read_header(path, text)
    given = given or {}
    unknown = [k for k in given if k not in header.params]
    if unknown:
        known = (
            ", ".join(f"{p.name} (default {p.default})" for p in header.params.values()) or "none"
        )
        raise NslabError(
            f"{path}: unknown parameter {', '.join(repr(u) for u in unknown)} — "
            f"this template takes: {known}"
        )
    values = {name: p.default for name, p in header.params.items()}
    values.update({k: convert(v) if isinstance(v, str) else v for k, v in given.items()})
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,  # block tags on their own lines leave no blank lines
        lstrip_blocks=True,
        autoescape=False,
    )

    def fail(message: str) -> None:
        raise _Fail(message)

    env.globals["fail"] = fail
    label = f"{path} (template rendered with {describe(values)})"
    try:
        template = env.get_template(path.name)  # so tracebacks carry template lines
        return template.render(**values), values
    except jinja2.TemplateSyntaxError as exc:
        raise TopologyError(
            [f"{path}:{exc.lineno}: template syntax error: {exc.message} — fix the Jinja2 syntax"]
        ) from None
    except _Fail as exc:
        raise TopologyError([f"{label}: params: {exc} (see the header of {path.name})"]) from None
    except jinja2.UndefinedError as exc:
        line = _template_line(exc, path)
        where = f"{path}:{line}" if line else str(path)
        raise TopologyError(
            [
                f"{where}: {exc.message} — declare it under `params:` in the template header, or fix the name"
            ]
        ) from None
    except Exception as exc:  # arithmetic on a string parameter, etc.
        line = _template_line(exc, path)
        where = f"{path}:{line}" if line else str(path)
        raise TopologyError(
            [f"{where}: rendering with {describe(values)} failed: {exc} — check the -p values"]
        ) from None


def _template_line(exc: BaseException, path: Path) -> int | None:
    """Line of the template in the traceback (Jinja2 rewrites frames to template lines)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if fname.endswith(path.name) and Path(fname).resolve() == path.resolve():
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
