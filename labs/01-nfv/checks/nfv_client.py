"""The grader's HTTP client, run inside h1 or h2 (as root, the host's python).

    python nfv_client.py '<json: list of groups>'

A group is {"parallel": bool, "reqs": [request, ...]}; a request is
{"tag", "host", "port", "chunks": [str, ...], "timeout", "answer_timeout",
"pause"}: `timeout` bounds the connect and sending, `answer_timeout` the wait
for the answer after the last chunk. Each chunk
is one send() with TCP_NODELAY and `pause` seconds between chunks, so the
chunks leave as separate TCP segments (the IDS must reassemble). No chunks:
connect only. A request that runs out of time is a failure.
Prints one JSON list of results, in request order.
"""

import json
import socket
import sys
import threading
import time


def one(req):
    res = {"tag": req["tag"], "connected": False, "status": None, "backend": None}
    t0 = time.monotonic()
    end = t0 + req["timeout"]
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s.settimeout(req["timeout"])
        s.connect((req["host"], req["port"]))
        res["connected"] = True
        res["sport"] = s.getsockname()[1]
        for i, c in enumerate(req["chunks"]):
            if i:
                time.sleep(req.get("pause", 0.05))
            s.sendall(c.encode("latin-1"))
        if not req["chunks"]:
            return res
        end = time.monotonic() + req.get("answer_timeout", req["timeout"])
        data = b""
        while b"\r\n\r\n" not in data:
            s.settimeout(max(end - time.monotonic(), 0.001))
            b = s.recv(4096)
            if not b:
                break
            data += b
        head, _, body = data.partition(b"\r\n\r\n")
        lengths = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ]
        while lengths and len(body) < lengths[0]:
            s.settimeout(max(end - time.monotonic(), 0.001))
            b = s.recv(4096)
            if not b:
                break
            body += b
        if head:
            res["status"] = int(head.split()[1])
        try:
            res["backend"] = json.loads(body).get("backend")
        except ValueError:
            pass
    except Exception as e:  # noqa: BLE001 - every failure is a result
        res["error"] = type(e).__name__ + (": timed out" if isinstance(e, socket.timeout) else "")
    finally:
        res["elapsed_s"] = round(time.monotonic() - t0, 3)
        s.close()
    return res


def main():
    out = []
    for group in json.loads(sys.argv[1]):
        reqs = group["reqs"]
        if group["parallel"]:
            rs = [None] * len(reqs)

            def run(i, r, rs=rs):
                rs[i] = one(r)

            ts = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(reqs)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            out += rs
        else:
            # a chain that answers nothing would make every request wait its
            # full timeout: after `give_up` failures in a row the rest of the
            # group is not sent (and counts as failed)
            fails = 0
            for r in reqs:
                if fails >= group.get("give_up", len(reqs)):
                    out.append(
                        {
                            "tag": r["tag"],
                            "connected": False,
                            "status": None,
                            "backend": None,
                            "error": "not sent: earlier requests failed",
                        }
                    )
                    continue
                res = one(r)
                fails = fails + 1 if res["status"] is None else 0
                out.append(res)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
