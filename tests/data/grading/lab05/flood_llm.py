"""Hostile helper of tests/test_lab05.py, copied into a submission: outlives
it (own session, ignores SIGTERM/SIGHUP) and sends completions to every
loopback listener while the grading runs. Bounded: 20 requests/s, at most
60 s, and it stops when the grading's copy of the submission (its cwd) is gone.
argv[1] marks its command line, so the test can tell whether it outlived grading."""

import os
import signal
import socket
import sys
import time

MARK = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
BODY = b'{"model":"tiny","prompt":[5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20],"max_tokens":8}'
REQ = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY


def listeners() -> list[int]:
    ports = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            ip, port = local.split(":")
            if state == "0A" and ip == "0100007F":
                ports.append(int(port, 16))
    return ports


t0 = time.time()
while time.time() - t0 < 60:
    try:
        if os.stat(".").st_nlink == 0:
            break
    except OSError:
        break
    for port in listeners()[:20]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(REQ)
        except OSError:
            pass
    time.sleep(0.05)
