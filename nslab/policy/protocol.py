"""The policy protocol's messages and its component side (see nslab.policy).

`PolicyLink` is what a grader-owned component embeds: it listens on a Unix
socket, accepts one policy process, and turns `await link.ask(state)` into a
decision that is always valid: the policy's own when it answered in time and
passed validation, else the component's fallback, counted by outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

PROTOCOL = "nslab-policy/1"
MAX_LINE = 1 << 20  # one message; a longer line ends the connection
# kind -> "module:function" that builds the policy side's handler (nslab.policy.runner)
ADAPTERS = {
    "batching": "nslab.serving.batching:remote_adapter",
    "dispatch": "nslab.serving.policies:remote_adapter",
    "llm-scheduling": "nslab.llm.remote:remote_adapter",
}
# What happened to each decision the component needed:
#   ok       the policy's answer, valid and in time
#   late     no answer within the deadline
#   invalid  an answer that is not a valid decision (schema or the kind's rules)
#   error    the policy said its code failed (an exception in it)
#   absent   no policy to ask: not connected yet, gone, or benched after late answers
OUTCOMES = ("ok", "late", "invalid", "error", "absent")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Setup(_Strict):
    type: Literal["setup"] = "setup"
    protocol: str = PROTOCOL
    kind: str
    params: dict[str, Any] = {}


class Ready(_Strict):
    type: Literal["ready"]
    policy: str
    info: dict[str, Any] = {}


class Fail(_Strict):
    type: Literal["fail"]
    error: str


class Answer(_Strict):
    type: Literal["answer"]
    id: int
    decision: Any = None
    error: str | None = None


def dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


_GONE = object()


class PolicyLink:
    """The component's end. `decision` is the pydantic model of a decision;
    `check(state, decision)` returns why a well-formed decision is still
    wrong (or None); `fallback(state)` is the safe decision used instead.
    After `strikes` late answers in a row the policy is benched for
    `bench_s` (those decisions count as absent, taken at once), then asked
    again: a stuck policy cannot stall the component, and one that stalled
    for a moment is not lost for the rest of the run. One policy process is
    connected at a time; when it goes, another may connect (a restarted one)."""

    def __init__(
        self,
        path: str,
        kind: str,
        params: dict[str, Any],
        decision: type[BaseModel],
        fallback: Callable[[dict], BaseModel],
        check: Callable[[dict, Any], str | None] | None = None,
        deadline_s: float = 0.05,
        strikes: int = 5,
        bench_s: float = 1.0,
    ):
        self.path, self.kind, self.params = path, kind, params
        self.decision, self.fallback, self.check = decision, fallback, check
        self.deadline_s, self.max_strikes, self.bench_s = deadline_s, strikes, bench_s
        self._benched_until = 0.0  # loop time before which the policy is not asked
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.policy = ""  # the policy's class name, once ready
        self.info: dict[str, Any] = {}
        self.problems: list[str] = []  # the first few reasons for fallbacks (for logs)
        self.live = False
        self.ready = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._strikes = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._accept, path=self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o666)  # the policy runs as another (sandboxed) user

    async def stop(self) -> None:
        self.live = False
        if self._server:
            self._server.close()
        if self._writer:
            self._writer.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _problem(self, outcome: str, why: str) -> None:
        self.counts[outcome] += 1
        if len(self.problems) < 5:
            msg = f"policy {self.policy or '?'}: {outcome}: {why}"
            self.problems.append(msg)
            print(f"nslab policy link: {msg}", file=sys.stderr, flush=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # one policy at a time; others are refused
            writer.close()
            return
        self._writer, self._strikes, self._benched_until = writer, 0, 0.0
        try:
            writer.write(dumps(Setup(kind=self.kind, params=self.params).model_dump()))
            line = await asyncio.wait_for(reader.readline(), 30)
            first = json.loads(line) if line else {"type": "fail", "error": "closed"}
            if first.get("type") == "fail":
                self._problem("absent", f"the policy did not load: {Fail(**first).error}")
                return
            ready = Ready.model_validate(first)
            self.policy, self.info, self.live = ready.policy, ready.info, True
            self.ready.set()
            while True:
                line = await reader.readline()
                if not line or not line.endswith(b"\n"):
                    break
                self._deliver(line)
        except (ValueError, ValidationError, OSError, asyncio.TimeoutError) as exc:
            self._problem("absent", f"protocol broken: {str(exc)[:200]}")
        finally:
            self.live = False
            self.ready.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result(_GONE)
            self._pending.clear()
            writer.close()
            self._writer = None  # a policy process started again may connect again

    def _deliver(self, line: bytes) -> None:
        try:
            ans: Any = Answer.model_validate_json(line)
            fut = self._pending.pop(ans.id, None)
        except ValidationError as exc:
            # Answers come in order: garbage answers the oldest question.
            ans = f"not an answer message: {str(exc).splitlines()[0][:160]}"
            fut = self._pending.pop(next(iter(self._pending)), None) if self._pending else None
        if fut is not None and not fut.done():  # None: a late answer, already counted
            fut.set_result(ans)

    async def ask(self, state: dict) -> Any:
        """A valid decision for `state`: the policy's, or the fallback."""
        loop = asyncio.get_running_loop()
        if not self.live or self._writer is None or loop.time() < self._benched_until:
            self.counts["absent"] += 1
            return self.fallback(state)
        self._next_id += 1
        qid = self._next_id
        fut = loop.create_future()
        self._pending[qid] = fut
        try:
            self._writer.write(dumps({"type": "ask", "id": qid, "state": state}))
            # When this process itself stalls past the deadline, an answer that
            # arrived meanwhile is still read before wait_for gives up on it
            # (asyncio runs ready I/O before expired timers): the component's
            # own lag is not charged to the policy (tests/test_policy_link.py).
            got = await asyncio.wait_for(fut, self.deadline_s)
        except asyncio.TimeoutError:
            self._pending.pop(qid, None)
            self._strikes += 1
            self._problem("late", f"no answer within {self.deadline_s * 1000:g} ms")
            if self._strikes >= self.max_strikes:
                self._problem("absent", f"{self._strikes} late answers in a row: benched")
                self._benched_until = loop.time() + self.bench_s
            return self.fallback(state)
        except (OSError, RuntimeError):
            self._pending.pop(qid, None)
            self.counts["absent"] += 1
            return self.fallback(state)
        self._strikes = 0
        if got is _GONE:
            self.counts["absent"] += 1
            return self.fallback(state)
        if isinstance(got, str):
            self._problem("invalid", got)
            return self.fallback(state)
        if got.error is not None:
            self._problem("error", got.error[:300])
            return self.fallback(state)
        try:
            decision = self.decision.model_validate(got.decision)
            why = self.check(state, decision) if self.check else None
        except ValidationError as exc:
            why = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'decision'}: {e['msg']}" for e in exc.errors()
            )
        if why:
            self._problem("invalid", f"{why} (answer {str(got.decision)[:120]})")
            return self.fallback(state)
        self.counts["ok"] += 1
        return decision

    def metrics(self) -> list[Any]:
        """Prometheus series of this link, for a component's registry:
        nslab_policy_decisions_total{outcome} and nslab_policy_connected."""
        return [_Series(self, "counter"), _Series(self, "gauge")]


class _Series:
    """A metric whose values are read from the link at render time."""

    def __init__(self, link: PolicyLink, kind: str):
        self.link, self.kind = link, kind
        if kind == "counter":
            self.name = "nslab_policy_decisions_total"
            self.help = "decisions the component needed, by outcome (see nslab.policy)"
        else:
            self.name = "nslab_policy_connected"
            self.help = "1 while a policy process is connected and answering"

    def lines(self) -> list[str]:
        if self.kind == "gauge":
            return [f"{self.name} {int(self.link.live)}"]
        return [f'{self.name}{{outcome="{k}"}} {v}' for k, v in self.link.counts.items()]
