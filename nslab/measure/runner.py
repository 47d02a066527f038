"""Where a measurement runs: in a node's network namespace or on the host."""

from __future__ import annotations

import subprocess
from typing import Any, Protocol

from nslab.errors import NslabError


class MeasureError(NslabError):
    """A measurement could not be taken (tool missing, peer unreachable, bad output)."""


class Runner(Protocol):
    def exec(
        self, node: str | None, cmd: str | list[str], timeout: float | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]: ...

    def popen(self, node: str | None, cmd: str | list[str], **kw: Any) -> subprocess.Popen: ...


class LocalRunner:
    """Runs commands on this host, in a named network namespace per node
    (`namespaces={"h1": "tgrd-h1"}`); unknown nodes and None run in the
    root namespace."""

    def __init__(self, namespaces: dict[str, str] | None = None):
        self.namespaces = dict(namespaces or {})

    def prefix(self, node: str | None) -> list[str]:
        ns = self.namespaces.get(node) if node else None
        return ["ip", "netns", "exec", ns] if ns else []

    def _argv(self, node: str | None, cmd: str | list[str]) -> list[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return self.prefix(node) + argv

    def exec(
        self,
        node: str | None,
        cmd: str | list[str],
        timeout: float | None = None,
        check: bool = False,
        input: str | None = None,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._argv(node, cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            **kw,
        )

    def popen(self, node: str | None, cmd: str | list[str], **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(self._argv(node, cmd), **kw)


def run(
    runner: Runner | None, node: str | None, cmd: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """exec with a bounded time; a hang becomes a MeasureError naming the command."""
    r = runner or LocalRunner()
    try:
        return r.exec(node, cmd, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MeasureError(
            f"{' '.join(cmd)} on {node or 'host'} took longer than {timeout:g} s"
        ) from None
