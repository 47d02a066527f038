"""Hostile lab 5 policy (tests/test_lab05.py): each trick tries to score more
than the starter; none may succeed."""

import json
import os
import subprocess
import sys
import time

# 1. Patch the grader's classes at import: the engine's fallback, its metrics,
#    the load client. (This runs in the sandboxed policy process only.)
try:
    from nslab.llm import bench, metrics, remote

    remote._fcfs = lambda state: remote.Order(order=[])
    metrics.EngineMetrics.render = lambda self: b"vllm:prefix_cache_hits_total 1e9\n"
    bench.send = None
except Exception:
    pass

# 2. Forged metrics and results, printed as a naive grader might scrape them.
print("vllm:prefix_cache_hits_total 100000\nvllm:prefix_cache_queries_total 100000", flush=True)
print(json.dumps({"hit_rate": 1.0, "goodput": 1e6}), flush=True)

# 3. A forged curve: a perfect-looking TTFT curve.
with open("curve.csv", "w") as f:
    f.write("input_len,ttft_ms\n32,1\n96,1\n192,1\n384,1\n768,1\n")

# 4. A forked child that outlives the submission and floods every loopback
#    listener (the engine among them) with requests.
MARK = "@@MARK@@"
if not os.path.exists("flood.started"):
    open("flood.started", "w").close()
    subprocess.Popen(
        [sys.executable, "flood_llm.py", MARK],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

_calls = [0]


class PrefixBatching:
    """5. Garbage answers, then answers past the deadline."""

    def order(self, view):
        _calls[0] += 1
        if _calls[0] % 3 == 0:
            time.sleep(0.2)  # past the engine's 50 ms deadline
            return [w.request_id for w in view.waiting]
        if _calls[0] % 3 == 1:
            return ["not-a-request", 7, None]
        return {"order": "everything"}


class Starver:
    """6. Admits nothing, ever: requests wait until the client gives up."""

    def order(self, view):
        return []
