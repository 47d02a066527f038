"""A minimal HTTP/1.1 server and client on asyncio protocols.

Why not a framework: the pod, the dispatcher and the load generator all sit
on the request path, and every 100 µs they add shows up in the students'
latency curves. Plain `asyncio.Protocol`s with keep-alive and Content-Length
bodies are all the Open Inference Protocol needs (no chunked requests, no
TLS), and cost a fraction of what a general framework does.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MAX_HEADER = 64 * 1024
MAX_BODY = 256 * 1024 * 1024

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    query: str = ""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(obj, separators=(",", ":")).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        # The Open Inference Protocol's error object: {"error": "<message>"}.
        return cls.json({"error": message}, status)

    def encode(self, keep_alive: bool = True) -> bytes:
        head = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
        ]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        if not keep_alive:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0].split(" ")
    if len(first) != 3:
        raise ValueError(f"bad start line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers[k.strip().lower()] = v.strip()
    return first[0], first[1], headers


class _ServerProtocol(asyncio.Protocol):
    """One connection: parse requests in order, answer them in order."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _fail(self, status: int, msg: str) -> None:
        assert self.transport is not None
        self.transport.write(Response.error(status, msg).encode(keep_alive=False))
        self.transport.close()
        self.closed = True

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEADER:
                self._fail(400, "request header too large")
            return
        try:
            method, target, headers = _parse_head(bytes(self.buf[:end]))
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")
            return
        if "chunked" in headers.get("transfer-encoding", ""):
            self._fail(400, "chunked request bodies are not supported; send Content-Length")
            return
        if length < 0:
            self._fail(400, f"negative Content-Length {length}")
            return
        if length > MAX_BODY:
            self._fail(413, f"body of {length} bytes exceeds {MAX_BODY}")
            return
        total = end + 4 + length
        if len(self.buf) < total:
            return
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        path, _, query = target.partition("?")
        req = Request(method, path, headers, body, query)
        keep = headers.get("connection", "").lower() != "close"
        self.busy = True
        task = asyncio.ensure_future(self.handler(req))
        task.add_done_callback(lambda t: self._done(t, keep))

    def _done(self, task: asyncio.Future, keep: bool) -> None:
        self.busy = False
        if self.closed or self.transport is None:
            return
        if task.cancelled():
            resp = Response.error(503, "server shutting down")
        elif task.exception() is not None:
            resp = Response.error(500, f"internal error: {task.exception()!r}")
        else:
            resp = task.result()
        self.transport.write(resp.encode(keep))
        if not keep:
            self.transport.close()
            self.closed = True
            return
        if self.buf:
            self._next()


async def serve(handler: Handler, host: str, port: int) -> asyncio.base_events.Server:
    """Start an HTTP server; port 0 picks a free port (see server.sockets)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _ServerProtocol(handler), host, port, reuse_address=True, backlog=1024
    )


class HttpError(Exception):
    """The connection failed (refused, reset, timed out) before a full response."""


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.head: tuple[int, dict[str, str], int] | None = None  # status, headers, body start

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection lost: {exc or 'closed by peer'}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.head = (status, headers, end + 4)
        status, headers, start = self.head
        length = int(headers.get("content-length", "0"))
        if len(self.buf) >= start + length:
            body = bytes(self.buf[start : start + length])
            del self.buf[: start + length]
            self.head = None
            self.waiter.set_result((status, headers, body))


class Connection:
    """One keep-alive client connection; one request at a time."""

    def __init__(self, proto: _ClientProtocol):
        self.proto = proto

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 5.0) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(_ClientProtocol, host, port), timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        return cls(proto)

    @property
    def closed(self) -> bool:
        return self.proto.closed

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        if self.proto.closed or self.proto.transport is None:
            raise HttpError("connection closed")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        msg = (
            f"{method} {path} HTTP/1.1\r\nHost: nslab\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        ).encode("latin-1") + body
        fut = asyncio.get_running_loop().create_future()
        self.proto.waiter = fut
        self.proto.transport.write(msg)
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as exc:
            self.close()
            raise HttpError(f"no response within {timeout} s") from exc

    def close(self) -> None:
        if self.proto.transport is not None:
            self.proto.transport.close()
        self.proto.closed = True


class Pool:
    """Keep-alive connections to one server, opened on demand and reused."""

    def __init__(self, host: str, port: int, max_idle: int = 256):
        self.host, self.port, self.max_idle = host, port, max_idle
        self.idle: list[Connection] = []

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = None
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is None:
            conn = await Connection.open(self.host, self.port)
        try:
            result = await conn.request(method, path, body, headers, timeout)
        except BaseException:
            conn.close()
            raise
        if not conn.closed and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()
        return result

    def close(self) -> None:
        for c in self.idle:
            c.close()
        self.idle.clear()


def split_url(url: str) -> tuple[str, int]:
    """'http://10.0.0.5:8000' or '10.0.0.5:8000' -> ('10.0.0.5', 8000)."""
    rest = url.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"URL {url!r} lacks a port; write it as http://HOST:PORT")
    return host.strip("[]"), int(port)


async def until_signalled() -> None:
    """Wait for SIGTERM or SIGINT: how a foreground server knows to stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
