"""A flow table with per-entry timeouts (NAPT mappings, load-balancer connections)."""

from __future__ import annotations

import time
from typing import Any


class FlowTable:
    """dict-like: key -> value, each entry expiring `timeout` seconds after its last use."""

    def __init__(self) -> None:
        self._d: dict[Any, list] = {}  # key -> [value, expires_at, timeout]

    def get(self, key: Any, now: float | None = None) -> Any:
        e = self._d.get(key)
        if e is None:
            return None
        now = time.monotonic() if now is None else now
        if e[1] < now:
            del self._d[key]
            return None
        return e[0]

    def put(self, key: Any, value: Any, now: float | None = None, timeout: float = 300.0) -> None:
        now = time.monotonic() if now is None else now
        self._d[key] = [value, now + timeout, timeout]

    def touch(self, key: Any, now: float | None = None, timeout: float | None = None) -> None:
        e = self._d.get(key)
        if e is not None:
            now = time.monotonic() if now is None else now
            if timeout is not None:
                e[2] = timeout
            e[1] = now + e[2]

    def expires_soon(self, key: Any, within: float) -> bool:
        """True when the entry's current timeout is short (the flow was closing)."""
        e = self._d.get(key)
        return e is not None and e[2] <= within

    def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        dead = [k for k, e in self._d.items() if e[1] < now]
        for k in dead:
            del self._d[k]
        return len(dead)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: Any) -> bool:
        return self.get(key) is not None
