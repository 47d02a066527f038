"""Free TCP ports on this host."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nobody listens on right now (the kernel picks it). Another
    process may take it before the caller binds it: callers that must be sure
    check that their own process is the one listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
