"""The L7 dispatcher: one Open Inference Protocol front end for many pods.

Each inference request goes to the pod a policy (nslab/serving/policies.py)
chooses among the pods believed healthy. When a pod cannot be reached
(refused, reset, timed out) it is marked down, the request is retried on
another pod (at most `retries` times) and both are counted; a background
probe brings the pod back when /v2/health/ready answers again. A pod's
rejection (HTTP 503, queue full) is passed to the client, not retried: it
is back-pressure, and retrying it elsewhere would hide overload.

Run one:  python -m nslab.serving.dispatcher --pods a=http://10.0.0.2:8000,b=http://10.0.0.3:8000
              --policy round-robin --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback
from typing import Any

from nslab.errors import NslabError
from nslab.serving import metrics as prom
from nslab.serving.http import HttpError, Request, Response, serve, until_signalled
from nslab.serving.plugins import class_from_file
from nslab.serving.policies import POLICIES, DispatchRequest, PodView, Policy, RemotePolicy

POLICY_HELP = f"{', '.join(POLICIES)}, FILE.py:Class (in this process) or socket:PATH"


def load_policy(spec: str, deadline_ms: float = 50.0) -> Policy:
    """A built-in policy name, FILE.py:ClassName (a student's, loaded here),
    or socket:PATH (a policy process connects there: nslab.policy)."""
    if spec in POLICIES:
        return POLICIES[spec]()
    if spec.startswith("socket:"):
        return RemotePolicy(spec[len("socket:") :], deadline_ms / 1000)
    hint = f"use one of {POLICY_HELP}"
    return class_from_file(spec, "dispatch policy", hint, "nslab_dispatch_")()


def parse_pods(spec: str | list) -> list[tuple[str, str]]:
    """'a=http://h:p,b=http://h:p' or [{'name':..,'url':..}] -> [(name, url)]."""
    if isinstance(spec, list):
        return [(d["name"], d["url"]) for d in spec]
    out = []
    for i, part in enumerate(x for x in spec.split(",") if x.strip()):
        name, sep, url = part.partition("=")
        out.append((name.strip(), url.strip()) if sep else (f"pod{i}", name.strip()))
    if not out:
        raise NslabError("the dispatcher needs at least one pod (--pods NAME=URL,...)")
    return out


class Dispatcher:
    def __init__(
        self,
        pods: list[tuple[str, str]],
        policy: Policy | str = "round-robin",
        retries: int = 2,
        timeout_s: float = 10.0,
        poll_interval_s: float = 0.02,
        probe_interval_s: float = 0.25,
        policy_deadline_ms: float = 50.0,
    ):
        self.pods = [PodView(n, u) for n, u in pods]
        self.policy = load_policy(policy, policy_deadline_ms) if isinstance(policy, str) else policy
        self.retries = retries
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.probe_interval_s = probe_interval_s
        r = self.registry = prom.Registry()
        self.m_requests = r.add(
            prom.Counter("nslab_dispatch_requests_total", "answers by pod and code")
        )
        self.m_retries = r.add(prom.Counter("nslab_dispatch_retries_total", "requests retried"))
        self.m_failures = r.add(
            prom.Counter("nslab_dispatch_pod_failures_total", "failed attempts to reach a pod")
        )
        self.m_unserved = r.add(
            prom.Counter("nslab_dispatch_failed_total", "requests failed after all retries")
        )
        self.m_outstanding = r.add(prom.Gauge("nslab_dispatch_outstanding", "requests at each pod"))
        self.m_healthy = r.add(prom.Gauge("nslab_dispatch_pod_healthy", "1 when the pod is up"))
        self.server: asyncio.base_events.Server | None = None
        self.tasks: list[asyncio.Task] = []
        self.port = 0

    async def start(self, host: str = "0.0.0.0", port: int = 0) -> int:
        if isinstance(self.policy, RemotePolicy):
            await self.policy.link.start()
            for m in self.policy.link.metrics():
                self.registry.add(m)
        self.server = await serve(self.handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        self.tasks.append(asyncio.ensure_future(self._probe_loop()))
        # A remote policy says whether it needs metrics once it connects.
        if self.policy.needs_metrics or isinstance(self.policy, RemotePolicy):
            self.tasks.append(asyncio.ensure_future(self._scrape_loop()))
        return self.port

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.server:
            self.server.close()
        for p in self.pods:
            p.pool.close()
        if isinstance(self.policy, RemotePolicy):
            await self.policy.link.stop()

    def _mark_down(self, pod: PodView) -> None:
        pod.healthy = False
        pod.failures += 1
        self.m_failures.inc(pod=pod.name)
        self.m_healthy.set(0, pod=pod.name)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            for pod in self.pods:
                if pod.healthy:
                    continue
                try:
                    status, _, _ = await pod.pool.request("GET", "/v2/health/ready", timeout=1.0)
                except HttpError:
                    continue
                if status == 200:
                    pod.healthy = True
                    self.m_healthy.set(1, pod=pod.name)

    async def _scrape_loop(self) -> None:
        async def scrape(pod: PodView) -> None:
            sent, done = pod.sent_since_report, pod.done_since_report
            try:
                status, _, body = await pod.pool.request("GET", "/metrics", timeout=1.0)
            except HttpError:
                return
            if status == 200:
                pod.reported_queue = prom.value(
                    prom.parse(body.decode()), "nslab_inflight_requests"
                )
                # What happened while the scrape was in flight stays counted.
                pod.sent_since_report -= sent
                pod.done_since_report -= done

        while True:
            if self.policy.needs_metrics:
                await asyncio.gather(*(scrape(p) for p in self.pods if p.healthy))
            await asyncio.sleep(self.poll_interval_s)

    async def handle(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if parts == ["metrics"]:
            for p in self.pods:
                self.m_outstanding.set(p.outstanding, pod=p.name)
                self.m_healthy.set(int(p.healthy), pod=p.name)
            return Response(200, self.registry.render().encode(), "text/plain; version=0.0.4")
        if parts in (["v2", "health", "live"], ["v2", "health", "ready"]):
            ok = parts[-1] == "live" or any(p.healthy for p in self.pods)
            return Response(200 if ok else 503, b"")
        if parts == ["v2", "dispatcher"]:
            return Response.json(
                {
                    "policy": (
                        self.policy.link.policy or "(not connected)"
                        if isinstance(self.policy, RemotePolicy)
                        else type(self.policy).__name__
                    ),
                    "pods": [
                        {
                            "name": p.name,
                            "url": p.url,
                            "healthy": p.healthy,
                            "served": p.served,
                            "failures": p.failures,
                            "outstanding": p.outstanding,
                        }
                        for p in self.pods
                    ],
                }
            )
        if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            return await self.forward(req, parts[2])
        return Response.error(404, f"no such endpoint {req.path}")

    async def forward(self, req: Request, model: str) -> Response:
        fwd_headers = {
            k: v
            for k, v in req.headers.items()
            if k in ("content-type", "inference-header-content-length")
        }
        dreq = DispatchRequest(model, req.headers.get("x-nslab-key", ""), req.headers)
        tried: set[int] = set()
        last_error = "no pod is up"
        for attempt in range(self.retries + 1):
            candidates = [p for p in self.pods if p.healthy and id(p) not in tried]
            if not candidates:
                break
            try:
                if isinstance(self.policy, RemotePolicy):  # always a valid pod (or fallback)
                    pod = await self.policy.choose_async(dreq, candidates)
                else:
                    pod = self.policy.choose(dreq, candidates)
            except Exception as exc:  # a student's policy: say where it failed
                traceback.print_exc(file=sys.stderr)
                return Response.error(
                    500, f"policy {type(self.policy).__name__}.choose raised {exc!r}"
                )
            if pod not in candidates:
                return Response.error(
                    500, f"policy {type(self.policy).__name__} chose a pod not offered"
                )
            tried.add(id(pod))
            if attempt:
                self.m_retries.inc()
            pod.outstanding += 1
            pod.sent_since_report += 1
            try:
                status, headers, body = await pod.pool.request(
                    req.method, req.path, req.body, fwd_headers, self.timeout_s
                )
            except HttpError as exc:
                last_error = f"pod {pod.name}: {exc}"
                self._mark_down(pod)
                continue
            finally:
                pod.outstanding -= 1
                pod.done_since_report += 1
            pod.served += 1
            self.m_requests.inc(pod=pod.name, code=str(status))
            extra = {}
            if "inference-header-content-length" in headers:
                extra["Inference-Header-Content-Length"] = headers[
                    "inference-header-content-length"
                ]
            return Response(status, body, headers.get("content-type", "application/json"), extra)
        self.m_unserved.inc()
        return Response.error(
            502, f"dispatcher: request failed after {len(tried)} attempt(s): {last_error}"
        )


DISPATCHER_KEYS = {
    "pods",
    "policy",
    "port",
    "host",
    "retries",
    "timeout_s",
    "poll_interval_s",
    "policy_deadline_ms",
}


def command(node_config: dict[str, Any]) -> list[str]:
    """The command line that runs a dispatcher with this node config: keys `pods`
    (NAME=URL,... or [{name, url}]), `policy`, `port` (8080), `host`, `retries`,
    `timeout_s`, `poll_interval_s`, `policy_deadline_ms`."""
    cfg = {k: v for k, v in node_config.items() if k not in ("kind", "image", "ip", "gateway")}
    unknown = sorted(set(cfg) - DISPATCHER_KEYS - {"interfaces"})
    if unknown:
        raise NslabError(
            f"dispatcher config: unknown key(s) {', '.join(unknown)}; "
            f"keys are {', '.join(sorted(DISPATCHER_KEYS))}"
        )
    cfg.pop("interfaces", None)
    if "pods" not in cfg:
        raise NslabError("dispatcher config: `pods` is required (NAME=URL,NAME=URL)")
    parse_pods(cfg["pods"])
    load_policy(str(cfg.get("policy", "round-robin")))
    return [sys.executable, "-m", "nslab.serving.dispatcher", "--config", json.dumps(cfg)]


async def run_dispatcher(cfg: dict[str, Any]) -> None:
    d = Dispatcher(
        parse_pods(cfg["pods"]),
        cfg.get("policy", "round-robin"),
        int(cfg.get("retries", 2)),
        float(cfg.get("timeout_s", 10.0)),
        float(cfg.get("poll_interval_s", 0.02)),
        policy_deadline_ms=float(cfg.get("policy_deadline_ms", 50.0)),
    )
    port = await d.start(cfg.get("host", "0.0.0.0"), int(cfg.get("port", 8080)))
    print(f"READY {port}", flush=True)
    await until_signalled()
    await d.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="dispatcher config as inline JSON")
    p.add_argument("--pods", help="NAME=URL,NAME=URL,...")
    p.add_argument("--policy", help=f"{POLICY_HELP} (default round-robin)")
    p.add_argument("--port", type=int, help="listen port (default 8080; 0 = any)")
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument(
        "--retries", type=int, help="retries on another pod when one is down (default 2)"
    )
    p.add_argument(
        "--timeout-s", dest="timeout_s", type=float, help="per-attempt timeout (default 10)"
    )


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(args.config) if args.config else {}
    for k in ("pods", "policy", "port", "host", "retries", "timeout_s"):
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    if "pods" not in cfg:
        raise NslabError("the dispatcher needs pods: --pods NAME=URL,NAME=URL")
    load_policy(cfg.get("policy", "round-robin"))  # fail early on a bad policy
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nslab.serving.dispatcher", description=__doc__)
    add_arguments(p)
    try:
        asyncio.run(run_dispatcher(config_from_args(p.parse_args(argv))))
    except NslabError as exc:
        print(f"nslab dispatcher: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
