"""Every `nslab` command in the README and the guides is one the CLI accepts:
its verb and options exist, its lab ids name real labs, and it is written in
the one convention the docs use (`sudo nslab ...`; plain `nslab ...` only
for verbs that need no root). The CLI's own hints follow the same rule."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from nslab.cli import build_parser
from nslab.labs import list_labs

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOCS += sorted((REPO / "labs").glob("*/README.md"))
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}
# verbs (or verb + action) that run without root; every other verb needs `sudo`
NO_ROOT = {
    "graph",
    "export",
    "load",
    "serve",
    "bench",
    "release",
    "autograder",
    "doctor",
    "lab list",
}
NO_ROOT |= {"nf elements", "nf templates", "nf render"}
OPERATORS = {"|", "||", "&&", ";", "&", "do", "then", "time"}


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command line) of every line in a shell code block,
    continuation lines joined."""
    out, lang, buf, start = [], None, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang is None or lang not in SHELL_LANGS:
            continue
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    return out


def nslab_commands(line: str) -> list[tuple[bool, list[str]]]:
    """(run with sudo?, argv after `nslab`) of each nslab command in a line."""
    line = re.sub(r"^\s*[$#]\s+", "", line)  # a prompt
    try:
        toks = shlex.split(line, comments=True)
    except ValueError:
        return []  # not shell (output, a diagram)
    cmds, seg = [], []
    for t in toks + [";"]:
        if t.endswith(";") and t != ";":
            seg.append(t[:-1])
            t = ";"
        if t in OPERATORS or t.startswith((">", "<", "2>")):
            if seg:
                cmds.append(seg)
            seg = []
        else:
            seg.append(t)
    found = []
    for seg in cmds:
        subst_sudo = False
        while seg and re.fullmatch(r"[A-Z_]+=\S*", seg[0]):
            subst_sudo = seg[0].endswith("$(sudo")  # VAR=$(sudo nslab ...)
            seg = seg[1:]  # VAR=value prefixes
        if subst_sudo:
            seg = ["sudo", *seg]
        sudo = bool(seg) and seg[0] == "sudo"
        if sudo:
            seg = seg[1:]
        if seg and (seg[0] == "nslab" or seg[0].endswith("/nslab")):
            found.append((sudo, seg))
    return found


def _placeholder(value: str) -> bool:
    return value.isupper() or "<" in value or "$" in value or "{" in value


def problems(where: str, sudo: bool, argv: list[str], lab_ids: set[str]) -> list[str]:
    if argv[0] != "nslab":
        return [f"{where}: `{argv[0]}`: write `sudo nslab` (provisioning links it on PATH)"]
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(argv[1:])
    except SystemExit:
        return [f"{where}: `{shlex.join(argv)}`: {err.getvalue().strip().splitlines()[-1]}"]
    bad = []
    verb = " ".join(argv[1:3]) if " ".join(argv[1:3]) in NO_ROOT else args.verb
    if not sudo and verb not in NO_ROOT:
        bad.append(f"{where}: `{shlex.join(argv)}` needs root: write `sudo nslab {verb} ...`")
    labs = [getattr(args, "lab", None)] + list(getattr(args, "labs", None) or [])
    for lab in filter(None, labs):
        if not isinstance(lab, str) or _placeholder(lab):
            continue
        if lab not in lab_ids and not (REPO / lab / "lab.yaml").is_file():
            bad.append(f"{where}: `{shlex.join(argv)}`: no lab '{lab}' (labs: {sorted(lab_ids)})")
    return bad


def test_extractor_finds_commands_and_the_checker_catches_mistakes():
    """The extractor and the checker themselves (so that the doc test cannot pass vacuously)."""
    md = "x\n```sh\nsudo nslab check 00-sdn-warmup \\\n  --submission ~/lab0   # c\n```\n"
    md += "```python\nnslab up\n```\n```\nnslab: error: output\n```\n"
    lines = shell_lines(md)
    assert [n for n, _ in lines] == [3, 10]  # line 10 is output: no command
    cmds = [c for _, line in lines for c in nslab_commands(line)]
    assert cmds == [(True, ["nslab", "check", "00-sdn-warmup", "--submission", "~/lab0"])]
    ids = {"00-sdn-warmup"}
    assert problems("t", *cmds[0], ids) == []
    assert problems("t", False, ["nslab", "check", "00-sdn-warmup"], ids)  # no sudo
    assert problems("t", True, ["nslab", "check", "no-such-lab"], ids)
    assert problems("t", True, ["nslab", "chek", "00-sdn-warmup"], ids)
    assert problems("t", True, ["nslab", "check", "00-sdn-warmup", "--bogus"], ids)
    assert problems("t", True, [".venv/bin/nslab", "doctor"], ids)
    assert problems("t", False, ["nslab", "graph", "fat-tree", "-o", "x.svg"], ids) == []
    assert nslab_commands("for b in a; do sudo nslab down x; done") == [
        (True, ["nslab", "down", "x"])
    ]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_nslab_command_in_the_docs_parses(doc: Path):
    lab_ids = {s.id for s in list_labs(REPO / "labs")}
    bad, seen = [], 0
    for n, line in shell_lines(doc.read_text()):
        for sudo, argv in nslab_commands(line):
            seen += 1
            bad += problems(f"{doc.relative_to(REPO)}:{n}", sudo, argv, lab_ids)
    # inline code in the prose: `sudo nslab check ...` (arguments may be left out)
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        for m in re.finditer(r"`((?:sudo )?nslab [a-z][^`]*)`", line):
            synopsis = re.sub(r"\[[^\]]*\]|\.\.\.|…", "", m.group(1))  # [optional] parts
            for sudo, argv in nslab_commands(synopsis):
                probs = problems(f"{doc.relative_to(REPO)}:{n}", sudo, argv, lab_ids)
                bad += [p for p in probs if not re.search("required|expected one arg", p)]
    assert not bad, "\n".join(bad)
    if doc.name == "README.md" and doc.parent == REPO:
        assert seen >= 5, "the README's quick start lost its nslab commands"


def _messages(py: Path) -> list[tuple[int, str]]:
    """(line, text) of the string literals of a module that are not docstrings
    (what it prints or raises); f-string fields become X."""
    tree = ast.parse(py.read_text())
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            docs.add(id(body[0].value))
    out = []
    for node in ast.walk(tree):
        if id(node) in docs:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
            out.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


def test_cli_hints_use_the_docs_convention():
    """Hints the CLI prints (`nslab ...` in backquotes) parse and use `sudo` where needed."""
    lab_ids = {s.id for s in list_labs(REPO / "labs")}
    bad = []
    for py in sorted((REPO / "nslab" / "cli").glob("*.py")):
        for n, text in _messages(py):
            for m in re.finditer(r"`((?:sudo )?nslab [a-z][^`]*)`", text):
                for sudo, argv in nslab_commands(m.group(1).replace("...", "")):
                    where = f"{py.relative_to(REPO)}:{n}"
                    # a hint may leave out arguments (`sudo nslab check ...`)
                    bad += [
                        p
                        for p in problems(where, sudo, argv, lab_ids)
                        if "arguments are required" not in p
                    ]
    assert not bad, "\n".join(bad)
