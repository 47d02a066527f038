"""TCP and HTTP probes, run inside a node's namespace.

Each probe runs this module as a tiny program in the node
(`python -m nslab.measure.probe '<json>'`), so it works in any namespace
and reports timings measured there."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from nslab.measure.latency import Latencies
from nslab.measure.runner import MeasureError, Runner, run


@dataclass
class TcpResult:
    host: str
    port: int
    connect_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.connect_ms) and not self.errors

    @property
    def latencies(self) -> Latencies:
        return Latencies(list(self.connect_ms), "ms", len(self.errors))

    def __str__(self) -> str:
        s = f"tcp {self.host}:{self.port}: {len(self.connect_ms)} connects"
        return s + (f", {len(self.errors)} errors ({self.errors[0]})" if self.errors else "")


@dataclass
class HttpResult:
    url: str
    status: int | None
    body: bytes = b""
    elapsed_ms: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __str__(self) -> str:
        if self.error:
            return f"{self.url}: {self.error}"
        return f"{self.url}: HTTP {self.status} in {self.elapsed_ms:.1f} ms, {len(self.body)} bytes"


def _tcp(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"connect_ms": [], "errors": []}
    end = time.monotonic() + spec.get("budget", 30)
    for _ in range(int(spec.get("count", 1))):
        if time.monotonic() > end:
            out["errors"].append("probe time budget exhausted")
            break
        t0 = time.perf_counter()
        try:
            with socket.create_connection(
                (spec["host"], spec["port"]), timeout=spec["timeout"]
            ) as s:
                out["connect_ms"].append((time.perf_counter() - t0) * 1000)
                if spec.get("send") is not None:
                    s.sendall(spec["send"].encode())
                    s.shutdown(socket.SHUT_WR)
                    data = b""
                    while len(data) < 65536:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    out.setdefault("replies", []).append(data.decode("utf-8", "replace"))
        except OSError as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}")
        if spec.get("interval"):
            time.sleep(spec["interval"])
    return out


def _http(spec: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    u = urlsplit(spec["url"])
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=spec["timeout"])
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    t0 = time.perf_counter()
    try:
        body = spec.get("body")
        conn.request(
            spec["method"],
            path,
            body=body.encode() if body else None,
            headers=spec.get("headers") or {},
        )
        resp = conn.getresponse()
        data = resp.read(1 << 20)
        return {
            "status": resp.status,
            "body": data.decode("latin-1"),
            "elapsed_ms": (time.perf_counter() - t0) * 1000,
            "headers": dict(resp.getheaders()),
        }
    except (OSError, http.client.HTTPException) as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()


def _remote(
    runner: Runner | None, node: str | None, spec: dict[str, Any], timeout: float
) -> dict[str, Any]:
    if node is None and runner is None:
        return _tcp(spec) if spec["kind"] == "tcp" else _http(spec)
    res = run(
        runner, node, [sys.executable, "-m", "nslab.measure.probe", json.dumps(spec)], timeout
    )
    try:
        return json.loads(res.stdout)
    except json.JSONDecodeError:
        raise MeasureError(
            f"probe on {node or 'host'} failed: {res.stderr.strip()[-300:]}"
        ) from None


def tcp_connect(
    runner: Runner | None,
    node: str | None,
    host: str,
    port: int,
    count: int = 1,
    timeout_s: float = 3.0,
    interval_s: float = 0.0,
    send: str | None = None,
) -> TcpResult:
    """Open `count` TCP connections from `node` to host:port and time each
    connect; with `send`, also send it, half-close and read the reply."""
    budget = count * (timeout_s + interval_s) + 5
    spec = {"kind": "tcp", "host": host, "port": port, "count": count, "timeout": timeout_s}
    spec |= {"interval": interval_s, "send": send, "budget": budget}
    d = _remote(runner, node, spec, budget + 10)
    r = TcpResult(host, port, d["connect_ms"], d["errors"])
    r.replies = d.get("replies", [])  # type: ignore[attr-defined]
    return r


def http_request(
    runner: Runner | None,
    node: str | None,
    url: str,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> HttpResult:
    """One HTTP request from `node`; any method (POST/PUT included), bounded in time."""
    spec = {
        "kind": "http",
        "url": url,
        "method": method,
        "body": body,
        "headers": headers,
        "timeout": timeout_s,
    }
    d = _remote(runner, node, spec, timeout_s + 10)
    return HttpResult(
        url,
        d.get("status"),
        d.get("body", "").encode("latin-1"),
        d.get("elapsed_ms"),
        d.get("headers", {}),
        d.get("error"),
    )


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(_tcp(spec) if spec["kind"] == "tcp" else _http(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
