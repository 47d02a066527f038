"""A Click-like configuration language for NFs.

    // comments: // or #
    src :: FromDevice($in);                 // declaration: name :: Class(args)
    cls :: IPClassifier(arp, icmp, -);
    src -> Counter(all) -> cls;              // chains; anonymous elements allowed
    cls[0] -> ToDevice($out);                // [n] picks an output (after) or input (before)
    cls[1] -> [0]ToDevice($out);
    cls[2] -> Discard;

Statements end with `;` or a newline (a line ending in `->` continues).
Arguments are comma-separated; `key=value` passes a keyword. `$name` is
replaced by a parameter given to `load()` (e.g. interface names).
"""

from __future__ import annotations

import re
from pathlib import Path

from nslab.errors import NslabError
from nslab.nf import elements as E
from nslab.nf.element import Element
from nslab.nf.router import Router

ELEMENTS: dict[str, type[Element]] = {
    c.__name__: c
    for c in (
        E.FromDevice,
        E.ToDevice,
        E.Counter,
        E.AverageCounter,
        E.Discard,
        E.Tee,
        E.Print,
        E.IPClassifier,
        E.Classifier,
        E.Search,
        E.EtherRewrite,
        E.DecIPTTL,
        E.ARPResponder,
        E.ARPQuerier,
        E.ICMPPingResponder,
    )
}

_ITEM = re.compile(r"^(?:\[(\d+)\])?\s*(.*?)\s*(?:\[(\d+)\])?$", re.S)
_DECL = re.compile(r"^([A-Za-z_][\w@.]*)\s*::\s*(.+)$", re.S)
_CALL = re.compile(r"^([A-Za-z_]\w*)\s*(?:\((.*)\))?$", re.S)
_VAR = re.compile(r"\$(\w+)")


class ConfigError(NslabError):
    pass


def _split(text: str, seps: str) -> list[tuple[str, int]]:
    """Split at separators outside parentheses; returns (piece, line of its start)."""
    out, depth, cur, line, start_line = [], 0, [], 1, 1
    i = 0
    while i < len(text):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if depth == 0 and c in seps:
            out.append(("".join(cur), start_line))
            cur = []
            if c == "\n":
                line += 1
            start_line = line
            i += 1
            continue
        if c in "\n\r":
            line += 1
            if not "".join(cur).strip():
                start_line = line
        cur.append(c)
        i += 1
    out.append(("".join(cur), start_line))
    return out


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"(//|#)[^\n]*", "", text)


def _args(s: str | None) -> tuple[list[str], dict[str, str]]:
    if not s or not s.strip():
        return [], {}
    pos, kw = [], {}
    for piece, _ in _split(s, ","):
        piece = " ".join(piece.split())
        m = re.match(r"^([a-z_]\w*)\s*=\s*(.*)$", piece)
        if m:
            kw[m.group(1)] = m.group(2)
        else:
            pos.append(piece)
    return pos, kw


def parse(
    text: str,
    params: dict[str, str] | None = None,
    name: str = "nf",
    report: str | Path | None = None,
    origin: str = "<config>",
) -> Router:
    """Build a Router from configuration text."""
    params = params or {}
    router = Router(name, report=report)

    def subst(s: str, line: int) -> str:
        def rep(m: re.Match) -> str:
            if m.group(1) not in params:
                raise ConfigError(
                    f"{origin}:{line}: ${m.group(1)} is not set (pass it, e.g. {m.group(1)}=eth0)"
                )
            return params[m.group(1)]

        return _VAR.sub(rep, s)

    text = _strip_comments(text)
    # a line ending or starting with `->` continues the statement
    # (the joined newline becomes \r: not a separator, but still counted as a line)
    text = re.sub(r"->[ \t]*\n", "-> \r", text)
    text = re.sub(r"\n(\s*->)", lambda m: "\r" + m.group(1), text)
    statements = []
    for stmt, line in _split(text, ";\n"):
        stmt = stmt.replace("\r", " ").strip()
        if stmt:
            statements.append((subst(stmt, line), line))

    def make(body: str, line: int) -> Element:
        m = _DECL.match(body)
        if m:
            ename, call = m.group(1), m.group(2).strip()
            if ename in router.elements:
                raise ConfigError(f"{origin}:{line}: element {ename!r} is declared twice")
        else:
            ename, call = None, body
            if body in router.elements:
                return router.elements[body]
        c = _CALL.match(call)
        if not c:
            raise ConfigError(f"{origin}:{line}: cannot read {call!r} (expected Class(args))")
        cls = ELEMENTS.get(c.group(1))
        if cls is None:
            if ename is None and c.group(2) is None and re.fullmatch(r"[a-z_]\w*", call):
                raise ConfigError(
                    f"{origin}:{line}: unknown element name {call!r} (declare it: {call} :: Class(...))"
                )
            raise ConfigError(
                f"{origin}:{line}: unknown element class {c.group(1)!r}; known: {', '.join(sorted(ELEMENTS))}"
            )
        pos, kw = _args(c.group(2))
        try:
            el = cls(*pos, **kw)
        except NslabError as exc:
            raise ConfigError(f"{origin}:{line}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{origin}:{line}: {c.group(1)}({c.group(2) or ''}): {exc}") from None
        return router.add(el, ename)

    # declarations first, so connections may name elements declared later
    for stmt, line in statements:
        for piece, _ in _split(stmt.replace("->", "\x00"), "\x00"):
            m = _ITEM.match(piece.strip())
            if m and _DECL.match(m.group(2)):
                make(m.group(2), line)
    for stmt, line in statements:
        items = [p.strip() for p, _ in _split(stmt.replace("->", "\x00"), "\x00")]
        prev: Element | None = None
        prev_out = 0
        for k, piece in enumerate(items):
            m = _ITEM.match(piece)
            if not m or not m.group(2):
                raise ConfigError(f"{origin}:{line}: empty element in {stmt!r}")
            inport, body, outport = m.group(1), m.group(2), m.group(3)
            dm = _DECL.match(body)
            el = router.elements[dm.group(1)] if dm else make(body, line)
            if prev is not None:
                try:
                    prev.connect(prev_out, el, int(inport or 0))
                except ValueError as exc:
                    raise ConfigError(f"{origin}:{line}: {exc}") from None
            elif inport is not None and k == 0:
                raise ConfigError(
                    f"{origin}:{line}: input port [{inport}] before the first element"
                )
            prev, prev_out = el, int(outport or 0)
    return router


def load(
    path: str | Path,
    params: dict[str, str] | None = None,
    name: str | None = None,
    report: str | Path | None = None,
) -> Router:
    """Build a Router from a configuration file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read NF configuration {path}: {exc.strerror}") from None
    return parse(text, params, name=name or path.stem, report=report, origin=str(path))
