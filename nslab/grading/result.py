"""The result of grading one submission: what outputs.py renders and runner.py fills in.

Its own module so that the renderers and the runner do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SubmissionResult:
    name: str  # result folder name (the submission folder's basename, made unique)
    submission: str
    status: str  # ok | timed_out | crashed | error
    score: float = 0.0
    max_score: float = 0.0
    tests: list[dict[str, Any]] = field(default_factory=list)
    execution_time: float = 0.0
    output: str = ""  # overall message (why it crashed, timed out, ...)
    lab_id: str = ""
    lab_title: str = ""
    visibility: str = "all"

    @property
    def all_passed(self) -> bool:
        return bool(self.tests) and all(t["outcome"] == "passed" for t in self.tests)
