"""Dynamic batching, as Triton's dynamic batcher, with a pluggable policy.

Requests wait in one FIFO queue. Whenever a request arrives, a batch
finishes or a timer the policy asked for fires, the batcher asks the policy
how many queued items to launch now on a free device instance (0 = keep
waiting). `TritonPolicy` is Triton's rule: launch when `max_batch_size`
items are queued or the oldest has waited `max_queue_delay`. A policy is a
small class, so lab 3 can ask students to write a better one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from numbers import Integral
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nslab.serving.devices import Device
from nslab.serving.metrics import Counter, Gauge, Histogram, Registry


class QueueFull(Exception):
    """The queue holds `queue_limit` requests: the request is rejected."""


@dataclass
class QueueState:
    """What a policy sees when it decides."""

    now: float  # time.perf_counter()
    queued_requests: int
    queued_items: int  # rows (a request may carry several)
    oldest_wait_s: float  # how long the head of the queue has waited
    max_batch_size: int
    max_queue_delay_s: float
    idle_instances: int
    estimate_s: Callable[[int], float | None]  # device's service time for a batch, if known


class BatchPolicy:
    """Decide how many queued items to launch now (0 = wait)."""

    def decide(self, s: QueueState) -> int:
        raise NotImplementedError

    def wake_after_s(self, s: QueueState) -> float | None:
        """If `decide` said wait: ask again after this long even if nothing arrives
        (None: only when a request arrives or a batch finishes)."""
        return 0.001


class NoBatching(BatchPolicy):
    def decide(self, s: QueueState) -> int:
        return 1

    def wake_after_s(self, s: QueueState) -> float | None:
        return None


class TritonPolicy(BatchPolicy):
    """Launch when a full batch is queued or the oldest waited max_queue_delay."""

    def decide(self, s: QueueState) -> int:
        if s.queued_items >= s.max_batch_size or s.oldest_wait_s >= s.max_queue_delay_s:
            return min(s.queued_items, s.max_batch_size)
        return 0

    def wake_after_s(self, s: QueueState) -> float | None:
        return max(0.0, s.max_queue_delay_s - s.oldest_wait_s)


class Decision(BaseModel):
    """A batching decision on the policy protocol (kind `batching`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    launch: int = Field(ge=0, description="items to launch now; 0 = wait")
    wake_after_s: float | None = Field(default=None, ge=0, le=60, allow_inf_nan=False)


# What a late, invalid or absent answer becomes: one item alone, i.e. no
# batching. Never better than a policy's own answer, and the pod keeps serving.
FALLBACK = Decision(launch=1)
_STATE_FIELDS = [f.name for f in fields(QueueState) if f.name != "estimate_s"]


def wire_state(s: QueueState) -> dict[str, Any]:
    """A QueueState as the protocol sends it (estimate_s travels once, in setup)."""
    return {k: getattr(s, k) for k in _STATE_FIELDS}


def _check(state: dict, d: Decision) -> str | None:
    if d.launch > state["max_batch_size"]:
        return f"launch {d.launch} exceeds max_batch_size {state['max_batch_size']}"
    return None


class RemotePolicy(BatchPolicy):
    """A policy in another process, consulted over the policy protocol."""

    def __init__(self, path: str, device: Device, max_batch_size: int, deadline_s: float):
        from nslab.policy.protocol import PolicyLink

        n = min(2 * max_batch_size + 2, 1026)
        self.link = PolicyLink(
            path,
            "batching",
            {"estimate_s": [device.estimate_s(b) for b in range(n)]},
            Decision,
            lambda state: FALLBACK,
            _check,
            deadline_s,
        )

    async def ask(self, s: QueueState) -> Decision:
        return await self.link.ask(wire_state(s))


def remote_adapter(policy: BatchPolicy, params: dict) -> tuple[dict, Callable[[dict], dict]]:
    """The policy side (nslab.policy.runner): protocol state -> the student's
    QueueState -> policy.decide / wake_after_s -> decision. estimate_s(b) reads
    the table the pod sent (None beyond it): a copy, changing it changes nothing."""
    table = list(params.get("estimate_s") or [])

    def estimate_s(b: int) -> float | None:
        return table[b] if 0 <= b < len(table) else None

    def handle(state: dict) -> dict:
        s = QueueState(**state, estimate_s=estimate_s)
        n = policy.decide(s)
        if isinstance(n, Integral) and not isinstance(n, bool):
            n = int(n)
        wake = policy.wake_after_s(s) if n == 0 else None
        return {"launch": n, "wake_after_s": wake}

    return {}, handle


@dataclass
class Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    t_enq: float
    future: asyncio.Future
    t_start: float = 0.0
    batch: int = 0


@dataclass
class BatcherMetrics:
    registry: Registry = field(default_factory=Registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.queue_len = r.add(Gauge("nslab_queue_length", "requests waiting in the queue"))
        self.busy = r.add(Gauge("nslab_busy_instances", "device instances executing a batch"))
        self.rejected = r.add(
            Counter("nslab_rejected_total", "requests rejected because the queue was full")
        )
        self.exec_count = r.add(Counter("nslab_batches_total", "batches executed"))
        self.items = r.add(Counter("nslab_inference_items_total", "items (rows) inferred"))
        self.batch_size = r.add(
            Histogram(
                "nslab_batch_size",
                "items per executed batch",
                [1, 2, 4, 8, 16, 32, 64, 128, 256],
            )
        )
        buckets = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]
        self.queue_s = r.add(
            Histogram("nslab_queue_seconds", "time requests waited before execution", buckets)
        )
        self.compute_s = r.add(
            Histogram("nslab_compute_seconds", "execution time of a batch", buckets)
        )


class Batcher:
    def __init__(
        self,
        device: Device,
        max_batch_size: int = 1,
        max_queue_delay_us: float = 0,
        queue_limit: int = 1024,
        policy: BatchPolicy | None = None,
        metrics: BatcherMetrics | None = None,
        model_label: str = "",
    ):
        self.device = device
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.queue_limit = int(queue_limit)
        if policy is None:
            policy = NoBatching() if self.max_batch_size == 1 else TritonPolicy()
        self.policy = policy
        self.metrics = metrics or BatcherMetrics()
        self.label = {"model": model_label} if model_label else {}
        self.queue: deque[Pending] = deque()
        self.queued_items = 0
        self.idle = device.instances
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._schedule())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    def submit(self, inputs: dict[str, np.ndarray], rows: int) -> asyncio.Future:
        """Queue a request; its future gets (outputs, queue_s, compute_s, batch)."""
        if len(self.queue) >= self.queue_limit:
            self.metrics.rejected.inc(**self.label)
            raise QueueFull(f"queue full ({self.queue_limit} requests waiting)")
        fut = asyncio.get_running_loop().create_future()
        self.queue.append(Pending(inputs, rows, time.perf_counter(), fut))
        self.queued_items += rows
        self.metrics.queue_len.set(len(self.queue), **self.label)
        self.wakeup.set()
        return fut

    def state(self) -> QueueState:
        now = time.perf_counter()
        return QueueState(
            now=now,
            queued_requests=len(self.queue),
            queued_items=self.queued_items,
            oldest_wait_s=now - self.queue[0].t_enq if self.queue else 0.0,
            max_batch_size=self.max_batch_size,
            max_queue_delay_s=self.max_queue_delay_s,
            idle_instances=self.idle,
            estimate_s=self.device.estimate_s,
        )

    async def _decide(self, s: QueueState) -> tuple[int, float | None]:
        if isinstance(self.policy, RemotePolicy):
            d = await self.policy.ask(s)
            return d.launch, d.wake_after_s
        n = int(self.policy.decide(s))
        return n, (self.policy.wake_after_s(s) if n <= 0 else None)

    async def _schedule(self) -> None:
        while True:
            timeout = None
            # Cleared before asking: what arrives while a remote policy thinks wakes us.
            self.wakeup.clear()
            if self.queue and self.idle > 0:
                n, timeout = await self._decide(self.state())
                if n > 0:
                    self._launch(self._take(n))
                    continue
            if timeout is None:
                await self.wakeup.wait()
            else:
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout)
                except asyncio.TimeoutError:
                    pass

    def _take(self, n: int) -> list[Pending]:
        n = min(n, self.max_batch_size)
        batch = [self.queue.popleft()]  # at least one request, even if it carries > n rows
        items = batch[0].rows
        while self.queue and items + self.queue[0].rows <= n:
            p = self.queue.popleft()
            batch.append(p)
            items += p.rows
        self.queued_items -= items
        self.metrics.queue_len.set(len(self.queue), **self.label)
        return batch

    def _launch(self, batch: list[Pending]) -> None:
        self.idle -= 1
        self.metrics.busy.set(self.device.instances - self.idle, **self.label)
        asyncio.ensure_future(self._execute(batch))

    async def _execute(self, batch: list[Pending]) -> None:
        t0 = time.perf_counter()
        items = sum(p.rows for p in batch)
        try:
            # Requests of different shapes (e.g. identity with varying lengths)
            # cannot be stacked: run one group per shape.
            groups: dict[tuple, list[Pending]] = {}
            for p in batch:
                key = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(p.inputs.items()))
                groups.setdefault(key, []).append(p)
            for group in groups.values():
                names = group[0].inputs.keys()
                stacked = {k: np.concatenate([p.inputs[k] for p in group]) for k in names}
                out = await self.device.run(stacked, items)
                t1 = time.perf_counter()
                row = 0
                for p in group:
                    part = {k: v[row : row + p.rows] for k, v in out.items()}
                    row += p.rows
                    if not p.future.done():
                        p.future.set_result((part, t0 - p.t_enq, t1 - t0, items))
        except Exception as exc:  # the model failed: every request in the batch learns why
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            dt = time.perf_counter() - t0
            m = self.metrics
            m.exec_count.inc(**self.label)
            m.items.inc(items, **self.label)
            m.batch_size.observe(items, **self.label)
            m.compute_s.observe(dt, **self.label)
            for p in batch:
                m.queue_s.observe(t0 - p.t_enq, **self.label)
            self.idle += 1
            m.busy.set(self.device.instances - self.idle, **self.label)
            self.wakeup.set()
