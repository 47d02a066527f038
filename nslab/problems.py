"""Problems found in a user's file, kept as data until they are shown.

Validation collects every problem before it reports, so the user fixes them
all in one round. Each says where (file, line, dotted key), what is wrong and
how to fix it, and prints as `file:line: key: what — fix`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Where(Protocol):
    """Anything that names a place in a file (nslab.topo.model.Origin does)."""

    file: str
    line: int | None
    key: str


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    key: str  # dotted path of the key, e.g. topology.links[1].endpoints[0]; "" for the file
    message: str  # what is wrong
    fix: str = ""  # how to fix it

    @classmethod
    def at(cls, where: Where, message: str, fix: str = "") -> Problem:
        return cls(where.file, where.line, where.key, message, fix)

    def __str__(self) -> str:
        text = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key:
            text += f": {self.key}"
        text += f": {self.message}"
        return f"{text} — {self.fix}" if self.fix else text


class Problems:
    """Collects problems (each once) and lists them in file order."""

    def __init__(self) -> None:
        self._found: list[Problem] = []

    def add(self, where: Where, message: str, fix: str = "") -> None:
        self.append(Problem.at(where, message, fix))

    def append(self, problem: Problem) -> None:
        if problem not in self._found:
            self._found.append(problem)

    @property
    def items(self) -> list[Problem]:
        """The problems in file order (line by line; stable within a line)."""
        return sorted(self._found, key=lambda p: p.line or 0)

    def messages(self) -> list[str]:
        return [str(p) for p in self.items]

    def __bool__(self) -> bool:
        return bool(self._found)

    def __len__(self) -> int:
        return len(self._found)
