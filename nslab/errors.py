"""Errors nslab reports to users. Each says where, what is wrong and how to fix it."""

from __future__ import annotations


class NslabError(Exception):
    """An error meant for the user: printed without a traceback."""

    exit_code = 1


class TopologyError(NslabError):
    """A topology file is wrong. Carries every problem found, each with its origin."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems) if len(problems) != 1 else problems[0])


class CapabilityError(NslabError):
    """The host lacks a kernel feature or tool the topology needs."""

    exit_code = 3
