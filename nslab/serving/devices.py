"""Where a pod's batches execute: `cpu`, `cuda` and `sim-gpu`.

`sim-gpu` computes the real outputs on the CPU (so correctness checks hold)
but takes the batch's *time* from a profile: latency(b) = a + c·b for
b ≤ sat, and for larger batches ceil(b/sat) waves of latency(sat) — the
shape measured on real accelerators (a fixed launch/transfer cost, a small
per-item cost while the GPU has idle lanes, then linear in waves). Waiting
is an asyncio timer, so a 2-core machine can host many "GPU" pods.
See docs/serving.md for the profiles' sources.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from nslab.errors import NslabError
from nslab.serving.models import Model


@dataclass(frozen=True)
class SimProfile:
    name: str
    a_ms: float  # fixed cost per batch
    c_ms: float  # cost per item while below saturation
    sat: int  # batch size at which the device is full
    source: str = ""

    def latency_s(self, batch: int, scale: float = 1.0) -> float:
        if batch <= 0:
            return 0.0
        waves = math.ceil(batch / self.sat)
        last = batch - (waves - 1) * self.sat
        full = self.a_ms + self.c_ms * self.sat
        ms = (waves - 1) * full + self.a_ms + self.c_ms * last
        return ms * scale / 1000.0

    def throughput(self, batch: int, scale: float = 1.0) -> float:
        """Items per second when every batch has `batch` items."""
        return batch / self.latency_s(batch, scale)


PROFILES: dict[str, SimProfile] = {
    p.name: p
    for p in [
        SimProfile(
            "t4-resnet50",
            1.6,
            0.21,
            128,
            "NVIDIA T4, ResNet-50 v1.5, TensorRT INT8: ~1.8 ms at batch 1, ~4,700 img/s at "
            "batch 128 (NVIDIA data-center inference performance pages, MLPerf-era)",
        ),
        SimProfile(
            "a100-resnet50",
            0.9,
            0.032,
            256,
            "NVIDIA A100 SXM, ResNet-50 v1.5, TensorRT INT8: ~0.9 ms at batch 1, ~28,000 img/s "
            "at batch 256 (NVIDIA data-center inference performance pages, MLPerf-era)",
        ),
        SimProfile(
            "t4-bert-base",
            2.0,
            0.55,
            64,
            "NVIDIA T4, BERT-base seq 128, TensorRT INT8: ~2.5 ms at batch 1, ~1,700 seq/s at "
            "large batch (approximate)",
        ),
        SimProfile(
            "slow",
            20.0,
            1.0,
            32,
            "teaching profile: a slow accelerator sized for a 2-core laptop (48 req/s unbatched, "
            "615 req/s at batch 32)",
        ),
        SimProfile(
            "fast",
            5.0,
            0.25,
            32,
            "teaching profile: 4x the slow one (190 req/s unbatched, 2,460 req/s at batch 32)",
        ),
    ]
}


def parse_profile(spec: str) -> SimProfile:
    """A profile name, or 'a=<ms>,c=<ms>,sat=<n>' for a custom one."""
    if spec in PROFILES:
        return PROFILES[spec]
    if "=" in spec:
        try:
            kv = dict(part.split("=", 1) for part in spec.split(","))
            return SimProfile(spec, float(kv["a"]), float(kv["c"]), int(kv.get("sat", 32)))
        except (KeyError, ValueError) as exc:
            raise NslabError(
                f"sim-gpu profile {spec!r}: expected 'a=<ms>,c=<ms>,sat=<n>' ({exc})"
            ) from exc
    raise NslabError(
        f"unknown sim-gpu profile {spec!r}; use one of {', '.join(PROFILES)} "
        "or 'a=<ms>,c=<ms>,sat=<n>'"
    )


class Device:
    """Runs one batch. `instances` batches may run at once (Triton's instance count)."""

    kind = "base"

    def __init__(self, model: Model, instances: int = 1):
        self.model = model
        self.instances = instances

    def estimate_s(self, batch: int) -> float | None:
        """Expected service time of a batch, when the device knows it (sim-gpu)."""
        return None

    async def run(self, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"device": self.kind, "instances": self.instances}


class CpuDevice(Device):
    kind = "cpu"

    def __init__(self, model: Model, instances: int = 1):
        super().__init__(model, instances)
        # Heavy models, or several instances, run in threads (NumPy releases the
        # GIL); one instance of a tiny model runs inline, where a thread hop
        # would cost more than the compute.
        heavy = model.config.get("backend", model.name) == "cnn"
        self.pool = ThreadPoolExecutor(instances) if heavy or instances > 1 else None

    async def run(self, inputs, batch):
        if self.pool is None:
            return self.model.infer(inputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.model.infer, inputs)


class SimGpuDevice(CpuDevice):
    kind = "sim-gpu"

    def __init__(self, model: Model, instances: int = 1, profile: str = "fast", scale: float = 1):
        super().__init__(model, instances)
        self.profile = parse_profile(profile)
        self.scale = float(scale)

    def estimate_s(self, batch: int) -> float:
        return self.profile.latency_s(batch, self.scale)

    async def run(self, inputs, batch):
        start = time.perf_counter()
        out = await super().run(inputs, batch)
        remaining = self.estimate_s(batch) - (time.perf_counter() - start)
        # The event loop's timer rounds up to whole milliseconds (epoll); aiming
        # 0.5 ms early centres the error instead of always being late.
        if remaining > 0.0005:
            await asyncio.sleep(remaining - 0.0005)
        return out

    def describe(self):
        return {
            **super().describe(),
            "profile": self.profile.name,
            "a_ms": self.profile.a_ms,
            "c_ms": self.profile.c_ms,
            "sat": self.profile.sat,
            "time_scale": self.scale,
        }


def cuda_available() -> tuple[bool, str]:
    """(available, reason): CUDA through PyTorch."""
    try:
        import torch
    except ImportError:
        return False, "PyTorch is not installed (pip install torch) — no CUDA path"
    if not torch.cuda.is_available():
        return False, "PyTorch finds no CUDA device"
    return True, torch.cuda.get_device_name(0)


class CudaDevice(Device):
    kind = "cuda"

    def __init__(self, model: Model, instances: int = 1):
        ok, why = cuda_available()
        if not ok:
            raise NslabError(
                f"device 'cuda' for model {model.name!r}: {why}; use 'cpu' or 'sim-gpu'"
            )
        import torch

        super().__init__(model, instances)
        self.torch = torch
        self.dev = torch.device("cuda:0")
        self.w = {k: torch.from_numpy(v).to(self.dev) for k, v in model.weights.items()}
        self.pool = ThreadPoolExecutor(instances)

    def _run(self, inputs):
        t = self.torch
        with t.inference_mode():
            x = {k: t.from_numpy(np.ascontiguousarray(v)).to(self.dev) for k, v in inputs.items()}
            out = self.model.torch_forward(t, x, self.w)
            return {k: v.cpu().numpy() for k, v in out.items()}

    async def run(self, inputs, batch):
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._run, inputs)


def make_device(
    kind: str, model: Model, instances: int = 1, profile: str = "fast", scale: float = 1.0
) -> Device:
    if kind == "cpu":
        return CpuDevice(model, instances)
    if kind == "sim-gpu":
        return SimGpuDevice(model, instances, profile, scale)
    if kind == "cuda":
        return CudaDevice(model, instances)
    raise NslabError(f"device {kind!r} unknown; use cpu, cuda or sim-gpu")
