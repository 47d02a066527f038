"""The policy side of the policy protocol: load a policy class from a file and
answer a component's questions over its Unix socket (see nslab.policy).

    python -m nslab.policy.runner --connect /path/policy.sock batching_policy.py:SloAwarePolicy

The component's setup message names the kind (batching, dispatch, ...); the
kind's adapter turns each state into the objects the policy class expects,
calls it, and turns its result into a decision. An exception in the policy
is answered as an error (and printed here); the component falls back.
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import sys
import time
import traceback

from nslab.policy.protocol import ADAPTERS, MAX_LINE, PROTOCOL, Setup, dumps


def _connect(path: str, timeout_s: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def load_handler(spec: str, setup: Setup):
    """(class name, info, handler(state) -> decision dict) for the policy in `spec`."""
    from nslab.serving.plugins import class_from_file

    if setup.kind not in ADAPTERS:
        raise ValueError(f"unknown policy kind {setup.kind!r}; known: {', '.join(ADAPTERS)}")
    mod, _, fn = ADAPTERS[setup.kind].partition(":")
    adapter = getattr(importlib.import_module(mod), fn)
    cls = class_from_file(spec, f"{setup.kind} policy", "write it as FILE.py:ClassName", "policy_")
    info, handler = adapter(cls(), setup.params)
    return cls.__name__, info, handler


def serve(sock: socket.socket, spec: str) -> int:
    rfile = sock.makefile("rb", buffering=MAX_LINE)
    setup = Setup.model_validate_json(rfile.readline(MAX_LINE))
    if setup.protocol != PROTOCOL:
        print(f"policy runner: protocol {setup.protocol!r}, expected {PROTOCOL}", file=sys.stderr)
        return 2
    try:
        name, info, handler = load_handler(spec, setup)
    except BaseException as exc:  # the student's file: report why it did not load
        traceback.print_exc()
        sock.sendall(dumps({"type": "fail", "error": f"{spec}: {exc!r}"[:1000]}))
        return 1
    sock.sendall(dumps({"type": "ready", "policy": name, "info": info}))
    for line in rfile:
        msg = json.loads(line)
        if msg.get("type") != "ask":
            continue
        try:
            out = {"type": "answer", "id": msg["id"], "decision": handler(msg["state"])}
            data = dumps(out)
        except Exception as exc:
            traceback.print_exc()
            data = dumps({"type": "answer", "id": msg["id"], "error": repr(exc)[:500]})
        sock.sendall(data)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nslab.policy.runner", description=__doc__)
    p.add_argument("--connect", required=True, help="the component's Unix socket")
    p.add_argument("policy", help="FILE.py:ClassName")
    args = p.parse_args(argv)
    try:
        sock = _connect(args.connect)
    except OSError as exc:
        print(f"policy runner: cannot connect to {args.connect}: {exc}", file=sys.stderr)
        return 2
    with sock:
        try:
            return serve(sock, args.policy)
        except (OSError, ValueError) as exc:
            print(f"policy runner: connection ended: {exc}", file=sys.stderr)
            return 0


if __name__ == "__main__":
    sys.exit(main())
