"""One way to wait for something: poll a predicate until it holds or a deadline passes.

    port = wait_until(lambda: read_port(log), timeout=10, what="the pod's READY line")

The predicate may raise to stop waiting early (a process that exited will never
become ready); its exception propagates unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from nslab.errors import NslabError

T = TypeVar("T")


class WaitTimeout(NslabError, TimeoutError):
    """What was awaited did not happen within the timeout."""

    def __init__(self, what: str, timeout: float):
        self.what, self.timeout = what, timeout
        super().__init__(f"timed out after {timeout:g} s waiting for {what}")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    what: str = "a condition",
) -> T:
    """Call `predicate()` every `interval` seconds until it returns something
    truthy, and return that. It is always called at least once, and once more
    at the deadline (a slow last sleep must not lose a success). Raises
    WaitTimeout naming `what` when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(what, timeout)
        time.sleep(min(interval, left))
