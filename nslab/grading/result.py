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
    # Share of the grading's wall time in which some task on the machine
    # waited for a CPU (PSI); None without PSI. Timing checks judged under
    # heavy contention may be unfair: `nslab grade` says so.
    cpu_contention_pct: float | None = None

    @property
    def all_passed(self) -> bool:
        """Every check passed; a skipped check worth 0 points (e.g. one that
        needs tc netem where the kernel has none) does not count against it."""
        return bool(self.tests) and all(
            t["outcome"] == "passed" or (t["outcome"] == "skipped" and t["max_score"] == 0)
            for t in self.tests
        )
