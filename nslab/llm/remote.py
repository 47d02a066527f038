"""An LLM engine's scheduling policy in another process: the `llm-scheduling`
kind of the policy protocol (nslab.policy).

The engine's scheduler calls `policy.order(view)` on its own thread, once per
step while requests wait. `RemoteSchedulingPolicy` is such a policy object:
it asks a policy process (a student's, sandboxed) over a Unix socket, with a
deadline, and when the answer is late, invalid, an error, or nobody is
connected, it answers first-come-first-served itself and counts the fallback
(`nslab_policy_decisions_total{outcome}`). The policy's code never runs in the
engine's process.

    nslab serve llm --model tiny --policy socket:/run/lab/policy.sock
    python -m nslab.policy.runner --connect /run/lab/policy.sock my_policy.py:PrefixBatching

Policy side: the student's class has `order(view: StepView) -> list[str]`,
exactly as an in-process policy (nslab/llm/policy.py); `remote_adapter` turns
the protocol's state into that StepView. This module imports no torch, so the
policy process starts quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from nslab.llm.policy import StepView, WaitingView

KIND = "llm-scheduling"


class Order(BaseModel):
    """A decision: waiting request ids in admission order (each at most once)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    order: list[str]


def _check(state: dict, decision: Order) -> str | None:
    known = {w["request_id"] for w in state["waiting"]}
    if len(set(decision.order)) != len(decision.order):
        return "an id appears twice"
    unknown = [i for i in decision.order if i not in known]
    if unknown:
        return f"ids not waiting: {unknown[:3]}"
    return None


def _fcfs(state: dict) -> Order:
    return Order(order=[w["request_id"] for w in state["waiting"]])


def view_from_state(state: dict) -> StepView:
    return StepView(**{**state, "waiting": [WaitingView(**w) for w in state["waiting"]]})


def remote_adapter(policy: Any, params: dict) -> tuple[dict, Callable[[dict], dict]]:
    """The policy side (nslab.policy.runner): state -> StepView -> policy.order."""

    def handle(state: dict) -> dict:
        got = policy.order(view_from_state(state))
        return {"order": list(got) if isinstance(got, (list, tuple)) else got}

    return {}, handle


class RemoteSchedulingPolicy:
    """A SchedulingPolicy whose decisions come from a policy process.

    The protocol's link (an asyncio server) runs on a thread of its own, so
    the engine's thread only waits for one answer at a time, never longer
    than the deadline (plus a small margin for the hand-over)."""

    def __init__(self, path: str, deadline_s: float = 0.02, params: dict | None = None):
        from nslab.policy.protocol import PolicyLink

        self.deadline_s = deadline_s
        self._loop = asyncio.new_event_loop()
        self.link = PolicyLink(
            path, KIND, params or {}, Order, _fcfs, _check, deadline_s=deadline_s
        )
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="llm-policy-link", daemon=True
        )
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.link.start())
        started.set()
        self._loop.run_forever()

    def order(self, view: StepView) -> list[str]:
        state = view.to_json()
        fut = asyncio.run_coroutine_threadsafe(self.link.ask(state), self._loop)
        try:
            return list(fut.result(self.deadline_s + 1.0).order)
        except Exception:  # the link itself stalled: still a fallback, still counted
            fut.cancel()
            self.link.counts["absent"] += 1
            return _fcfs(state).order

    def metrics_lines(self) -> list[str]:
        """The link's Prometheus series (decisions by outcome, connected)."""
        out = []
        for s in self.link.metrics():
            out += [f"# HELP {s.name} {s.help}", f"# TYPE {s.name} {s.kind}", *s.lines()]
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.link.stop(), self._loop).result(2)
        self._loop.call_soon_threadsafe(self._loop.stop)
