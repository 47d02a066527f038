"""Hostile helper of tests/test_grading_hostile_serving.py, copied into a
submission: a process that outlives the submission (own session, ignores
SIGTERM/SIGHUP) and floods inference pods on loopback while the grading that
started it runs. Bounded: 30 requests/s per pod, at most 60 s, and it stops
as soon as the grading's copy of the submission (its cwd) is gone. argv[1]
marks its command line, so the test can tell whether it outlived grading."""

import json
import os
import signal
import socket
import sys
import time

MARK = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
).encode()
REQ = (
    b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    + BODY
)


def grading_alive() -> bool:
    # The grading removes its copy of the submission (our cwd) when it ends.
    try:
        return os.stat(".").st_nlink > 0
    except OSError:
        return False


def listeners() -> list[int]:
    ports = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip, port = local.split(":")
            if state == "0A" and ip == "0100007F":
                ports.append(int(port, 16))
    return ports


def is_pod(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            return b"nslab-pod" in s.recv(4096)
    except OSError:
        return False


end = time.time() + 60
conns: dict[int, socket.socket] = {}
pods: set[int] = set()
last_scan = 0.0
while time.time() < end:
    if time.time() - last_scan > 1.0:
        if not grading_alive():
            break
        pods = {p for p in listeners() if p in pods or is_pod(p)}
        last_scan = time.time()
    for port in pods:
        try:
            if port not in conns:
                conns[port] = socket.create_connection(("127.0.0.1", port), timeout=0.2)
                conns[port].setblocking(False)
            conns[port].send(REQ)  # never read: answers pile up, requests keep coming
        except OSError:
            conns.pop(port, None)
    time.sleep(1 / 30)
