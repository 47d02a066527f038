"""Lab 2's grader-side KV server (grader-only: never handed to students).

Run by the checks as root in node kv:  python kvgrader.py --addr IP
It reads one JSON line on stdin, {"secret": hex, "keys": [[hex, size], ...]},
fills the table itself (values made with the per-grading secret, so only this
process and the checks know them; nothing goes over the network), prints
{"ready": ...}, and then answers commands, one JSON line each:

  {"cmd": "stats"}                               the server's own counters
  {"cmd": "update", "keys": [hex...], "seconds": s, "size": n}
                                                 new versions of keys in a loop,
                                                 written by this process (no RPC)

The secret travels on a pipe, never on a command line (which /proc shows).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from nslab.rdma.kv import Server, versioned_value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="0.0.0.0")
    a = ap.parse_args()
    setup = json.loads(sys.stdin.readline())
    secret = bytes.fromhex(setup["secret"])
    srv = Server(a.addr)
    for h, size in setup["keys"]:
        k = bytes.fromhex(h)
        srv.table.put(k, versioned_value(k, 1, size, secret))
    for fn in (srv._accept_loop, srv._rdma_loop, srv._tcp_loop):
        threading.Thread(target=fn, daemon=True).start()
    print(json.dumps({"ready": len(setup["keys"]), "provider": srv.ctx.provider}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "stats":
            print(json.dumps(srv.stats()), flush=True)
        elif cmd["cmd"] == "update":
            keys = [bytes.fromhex(h) for h in cmd["keys"]]
            end, ver, n = time.monotonic() + float(cmd["seconds"]), 1, 0
            while time.monotonic() < end:
                ver += 1
                for k in keys:
                    with srv.lock:  # like a PUT's handler, but not counted as one
                        srv.table.put(k, versioned_value(k, ver, int(cmd["size"]), secret))
                    n += 1
                time.sleep(0.0005)  # let the NIC thread serve READs between rounds
            print(json.dumps({"puts": n, "last_version": ver}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
