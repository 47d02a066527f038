"""A tiny HTTP backend for the NFV lab (llm1-3): answers GET, POST, PUT,
DELETE and HEAD on any path with 200 and says which backend answered
(unlike `python3 -m http.server`, which answers POST/PUT with 501).

    python -m nslab.nf.backend --name llm1 [--port 80] [--bind 0.0.0.0]

Body (JSON): {"backend": "llm1", "method": "PUT", "path": "/x", "received": 123,
"client": "100.0.0.1"} (client: the source address the backend saw)
Header: X-Backend: llm1. Pages: / (an index), /health, /v1/models; any
other path echoes the request summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


def make_handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"nslab-backend/{name}"

        def _answer(self, with_body: bool = True) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body_in = self.rfile.read(min(n, MAX_BODY)) if n > 0 else b""
            if self.path == "/v1/models":
                doc: dict = {"backend": name, "models": [{"id": "tiny-llm", "owned_by": name}]}
            elif self.path == "/health":
                doc = {"backend": name, "status": "ok"}
            else:
                doc = {
                    "backend": name,
                    "method": self.command,
                    "path": self.path,
                    "received": len(body_in),
                    "client": self.client_address[0],  # the source it saw, after any NAT
                }
            if self.path == "/" and self.command == "GET":
                out = f"<html><body><h1>{name}</h1><p>an inference backend</p></body></html>\n".encode()
                ctype = "text/html"
            else:
                out = (json.dumps(doc) + "\n").encode()
                ctype = "application/json"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
            self.send_header("X-Backend", name)
            self.end_headers()
            if with_body:
                self.wfile.write(out)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer()

        do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(with_body=False)

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write(f"{name} {self.address_string()} {fmt % args}\n")

    return Handler


def serve(name: str, port: int = 80, bind: str = "0.0.0.0") -> ThreadingHTTPServer:
    """An HTTP server (not started) that answers as backend `name`."""
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer((bind, port), make_handler(name))
    srv.daemon_threads = True
    return srv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nslab.nf.backend", description=__doc__)
    ap.add_argument("--name", required=True, help="the name this backend answers with (e.g. llm1)")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--bind", default="0.0.0.0")
    a = ap.parse_args(argv)
    try:
        srv = serve(a.name, a.port, a.bind)
    except OSError as exc:
        print(
            f"backend {a.name}: cannot listen on {a.bind}:{a.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    print(f"backend {a.name} listening on {a.bind}:{a.port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
