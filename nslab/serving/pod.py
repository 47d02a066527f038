"""An inference pod: one model behind the Open Inference Protocol (KServe v2, as
Triton speaks it) over HTTP/1.1, with dynamic batching and Prometheus metrics.

Run one:   python -m nslab.serving.pod --model digits --device sim-gpu --profile slow --port 8000
or from a topology node's config via `command(node_config)`.

Endpoints: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{m}[/versions/{v}],
/v2/models/{m}[/versions/{v}]/ready, POST /v2/models/{m}[/versions/{v}]/infer, GET /metrics.
Tensors travel as JSON (`data`) or with Triton's binary-data extension
(`Inference-Header-Content-Length`), which `tritonclient.http` uses by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from nslab.errors import NslabError
from nslab.serving import kserve
from nslab.serving import models as model_repo
from nslab.serving.batching import Batcher as _Batcher
from nslab.serving.batching import (
    BatcherMetrics,
    BatchPolicy,
    NoBatching,
    QueueFull,
    RemotePolicy,
    TritonPolicy,
)
from nslab.serving.devices import Device, make_device
from nslab.serving.http import Request, Response, serve, until_signalled
from nslab.serving.metrics import Counter, Gauge, Histogram
from nslab.serving.plugins import class_from_file


@dataclass
class PodConfig:
    """A pod's settings; the same keys as a `pod` node in a topology file."""

    model: str = "digits"  # name in the model repository (built-in: identity, digits, cnn)
    device: str = "cpu"  # cpu | cuda | sim-gpu
    max_batch_size: int = 1  # 1 = no batching
    max_queue_delay_us: float = 0  # how long the batcher may hold a request to fill a batch
    queue_limit: int = 1024  # requests waiting beyond this are rejected with HTTP 503
    concurrency: int = 1  # batches executing at once (Triton's instance count)
    profile: str = "fast"  # sim-gpu profile name or 'a=<ms>,c=<ms>,sat=<n>'
    time_scale: float = 1.0  # sim-gpu: multiply the profile's times (slow a GPU down)
    port: int = 8000
    host: str = "0.0.0.0"
    repo: str = ""  # model repository ('' = $NSLAB_MODEL_REPO or ~/.cache/nslab/models)
    # batching policy: '' (Triton's rule), 'none', 'triton', 'FILE.py:Class' (loaded
    # in this process), or 'socket:PATH' (a policy process connects there: nslab.policy)
    policy: str = ""
    policy_deadline_ms: float = 50.0  # socket policies: time to answer one decision
    name: str = ""  # pod name (metrics label); default: the model's name

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "pod config") -> PodConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known) - {"kind", "image", "ip", "gateway", "interfaces"})
        if unknown:
            raise NslabError(
                f"{where}: unknown key(s) {', '.join(unknown)}; pod keys are {', '.join(known)}"
            )
        out = cls()
        for k, v in d.items():
            if k not in known:
                continue
            default = getattr(out, k)
            try:
                setattr(out, k, type(default)(v))
            except (TypeError, ValueError) as exc:
                raise NslabError(
                    f"{where}: key {k!r} = {v!r} is not a valid {type(default).__name__}"
                ) from exc
        if out.device not in ("cpu", "cuda", "sim-gpu"):
            raise NslabError(f"{where}: device {out.device!r} unknown; use cpu, cuda or sim-gpu")
        for k in ("max_batch_size", "queue_limit", "concurrency"):
            if getattr(out, k) < 1:
                raise NslabError(f"{where}: {k} must be >= 1 (got {getattr(out, k)})")
        if out.max_queue_delay_us < 0:
            raise NslabError(f"{where}: max_queue_delay_us must be >= 0")
        return out


def command(node_config: dict[str, Any], python: str | None = None) -> list[str]:
    """The command line that runs a pod with this node config (e.g. in a node's
    namespace). `python`: the interpreter inside a container image (default: this one)."""
    cfg = PodConfig.from_dict(dict(node_config))
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    return [python or sys.executable, "-m", "nslab.serving.pod", "--config", json.dumps(d)]


def load_policy(
    spec: str, max_batch_size: int, device: Device | None = None, deadline_ms: float = 50.0
) -> BatchPolicy:
    if spec.startswith("socket:"):
        if device is None:
            raise NslabError("a socket: batching policy needs the pod's device")
        return RemotePolicy(spec[len("socket:") :], device, max_batch_size, deadline_ms / 1000)
    if not spec:
        return NoBatching() if max_batch_size == 1 else TritonPolicy()
    if spec == "none":
        return NoBatching()
    if spec == "triton":
        return TritonPolicy()
    hint = "write it as FILE.py:ClassName (or none, triton, socket:PATH)"
    return class_from_file(spec, "batching policy", hint, "nslab_policy_")()


class Pod:
    """The pod's request handling (usable in-process: `await Pod(cfg).start()`)."""

    def __init__(self, cfg: PodConfig):
        self.cfg = cfg
        self.model = model_repo.load(cfg.model, cfg.repo or None)
        self.name = cfg.name or self.model.name
        self.device = make_device(
            cfg.device, self.model, cfg.concurrency, cfg.profile, cfg.time_scale
        )
        self.metrics = BatcherMetrics()
        r = self.metrics.registry
        self.requests = r.add(Counter("nslab_requests_total", "inference requests by HTTP status"))
        self.inflight = r.add(Gauge("nslab_inflight_requests", "requests received, not answered"))
        self.latency = r.add(
            Histogram(
                "nslab_request_seconds",
                "time from request to response inside the pod",
                [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
            )
        )
        self.batcher = _Batcher(
            self.device,
            cfg.max_batch_size,
            cfg.max_queue_delay_us,
            cfg.queue_limit,
            load_policy(cfg.policy, cfg.max_batch_size, self.device, cfg.policy_deadline_ms),
            self.metrics,
            self.model.name,
        )
        self.model_outputs = {t.name: t for t in self.model.outputs}
        self.server: asyncio.base_events.Server | None = None
        self.port = cfg.port
        self._inflight = 0

    async def start(self) -> int:
        if isinstance(self.batcher.policy, RemotePolicy):
            link = self.batcher.policy.link
            await link.start()
            for m in link.metrics():
                self.metrics.registry.add(m)
        self.batcher.start()
        self.server = await serve(self.handle, self.cfg.host, self.cfg.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server:
            self.server.close()
        await self.batcher.stop()
        if isinstance(self.batcher.policy, RemotePolicy):
            await self.batcher.policy.link.stop()

    async def handle(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if parts == ["metrics"]:
            return Response(
                200, self.metrics.registry.render().encode(), "text/plain; version=0.0.4"
            )
        if not parts or parts[0] != "v2":
            return Response.error(404, f"no such endpoint {req.path}; try /v2 or /metrics")
        rest = parts[1:]
        if rest == []:
            return Response.json(
                {"name": "nslab-pod", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
            )
        if rest in (["health", "live"], ["health", "ready"]):
            return Response(200, b"")
        if len(rest) >= 2 and rest[0] == "models":
            name, tail = rest[1], rest[2:]
            if len(tail) >= 2 and tail[0] == "versions":
                tail = tail[2:]
            if name != self.model.name:
                return Response.error(
                    404, f"unknown model {name!r}; this pod serves {self.model.name!r}"
                )
            if tail == []:
                return Response.json(self.model.metadata())
            if tail == ["ready"]:
                return Response(200, b"")
            if tail == ["config"]:
                return Response.json(self.model.config)
            if tail == ["infer"]:
                if req.method != "POST":
                    return Response.error(405, "infer needs POST")
                return await self.infer(req)
        return Response.error(404, f"no such endpoint {req.path}")

    async def infer(self, req: Request) -> Response:
        t0 = time.perf_counter()
        self._inflight += 1
        self.inflight.set(self._inflight)
        try:
            resp = await self._infer(req)
        finally:
            self._inflight -= 1
            self.inflight.set(self._inflight)
        self.requests.inc(code=str(resp.status))
        if resp.status == 200:
            self.latency.observe(time.perf_counter() - t0)
        return resp

    async def _infer(self, req: Request) -> Response:
        try:
            header, binary = kserve.parse(
                req.body, req.headers.get("inference-header-content-length")
            )
            inputs, rows = kserve.decode_inputs(self.model, header, binary)
        except kserve.BadRequest as exc:
            return Response.error(400, f"bad inference request: {exc}")
        names = list(self.model_outputs)
        binary_of = dict.fromkeys(names, False)
        all_binary = bool((header.parameters or {}).get("binary_data_output"))
        if header.outputs:
            names = []
            for o in header.outputs:
                if o.name not in self.model_outputs:
                    have = list(self.model_outputs)
                    return Response.error(
                        400, f"bad inference request: unknown output {o.name!r}; have {have}"
                    )
                names.append(o.name)
                binary_of[o.name] = bool((o.parameters or {}).get("binary_data", all_binary))
        else:
            binary_of = dict.fromkeys(names, all_binary)
        try:
            fut = self.batcher.submit(inputs, rows)
        except QueueFull as exc:
            return Response.error(503, f"pod {self.name}: {exc}; retry later or add pods")
        try:
            outputs, queue_s, compute_s, batch = await fut
        except Exception as exc:
            return Response.error(500, f"model {self.model.name} failed: {exc!r}")
        return self._encode(header.id, names, binary_of, outputs, queue_s, compute_s, batch)

    def _encode(
        self, rid: str | None, names: list[str], binary_of: dict[str, bool], outputs: dict,
        queue_s: float, compute_s: float, batch: int,
    ) -> Response:  # fmt: skip
        specs = {t.name: t for t in self.model.outputs}
        out_json = []
        blobs = []
        for n in names:
            arr = np.ascontiguousarray(outputs[n], dtype=model_repo.DTYPES[specs[n].datatype])
            entry: dict[str, Any] = {
                "name": n,
                "datatype": specs[n].datatype,
                "shape": list(arr.shape),
            }
            if binary_of[n]:
                blob = arr.tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = arr.ravel().tolist()
            out_json.append(entry)
        body = {
            "model_name": self.model.name,
            "model_version": "1",
            "outputs": out_json,
            "parameters": {
                "queue_us": round(queue_s * 1e6),
                "compute_us": round(compute_s * 1e6),
                "batch_size": batch,
                "pod": self.name,
            },
        }
        if rid is not None:
            body["id"] = rid
        js = json.dumps(body, separators=(",", ":")).encode()
        if not blobs:
            return Response(200, js)
        return Response(
            200,
            js + b"".join(blobs),
            "application/octet-stream",
            {"Inference-Header-Content-Length": str(len(js))},
        )


async def run_pod(cfg: PodConfig, ready_line: bool = True) -> None:
    pod = Pod(cfg)
    port = await pod.start()
    if ready_line:
        print(f"READY {port}", flush=True)
    await until_signalled()
    await pod.stop()


def add_pod_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="pod config as JSON or a YAML/JSON file (keys as in docs/serving.md)"
    )
    for f in fields(PodConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None)


def config_from_args(args: argparse.Namespace) -> PodConfig:
    d: dict[str, Any] = {}
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            import yaml

            path = Path(text)
            if not path.is_file():
                raise NslabError(f"--config {text}: no such file (or pass inline JSON)")
            d = yaml.safe_load(path.read_text()) or {}
            where = str(path)
        else:
            d = json.loads(text)
            where = "--config"
    else:
        where = "command line"
    for f in fields(PodConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            d[f.name] = v
    return PodConfig.from_dict(d, where)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nslab.serving.pod", description=__doc__)
    add_pod_arguments(p)
    args = p.parse_args(argv)
    try:
        asyncio.run(run_pod(config_from_args(args)))
    except NslabError as exc:
        print(f"nslab pod: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
