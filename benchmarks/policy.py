"""Policy protocol benchmark (about 20 s): what a decision costs when the
policy runs in a process of its own (nslab.policy) instead of in the
component's process, in one run, interleaved.

  in-process: `await` of a coroutine that calls lab 3's reference policy
  protocol:   PolicyLink.ask -> Unix socket -> nslab.policy.runner -> the same
              policy -> back, validated (pydantic) into a Decision

Each side answers the same 2,000 queue states, in 5 alternating rounds.
Usage: .venv/bin/python benchmarks/policy.py
The last line reads: inproc_us=<median> protocol_us=<median> protocol_p99_us=<n> ratio=<n>
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nslab.labs import labs_root  # noqa: E402
from nslab.policy.protocol import PolicyLink  # noqa: E402
from nslab.serving import batching  # noqa: E402
from nslab.serving.devices import PROFILES  # noqa: E402
from nslab.serving.plugins import class_from_file  # noqa: E402

SPEC = f"{labs_root() / '03-batching' / 'solution' / 'batching_policy.py'}:SloAwarePolicy"
N, ROUNDS = 2000, 5


def states() -> list[dict]:
    return [
        dict(
            now=0.0,
            queued_requests=q,
            queued_items=q,
            oldest_wait_s=w,
            max_batch_size=32,
            max_queue_delay_s=0.0,
            idle_instances=1,
        )  # fmt: skip
        for q, w in ((1 + i % 40, (i % 90) / 1000) for i in range(N))
    ]


async def main() -> None:
    est = [PROFILES["slow"].latency_s(b) for b in range(66)]
    _, handle = batching.remote_adapter(
        class_from_file(SPEC, "policy", "", "bench_")(), {"estimate_s": est}
    )

    async def inproc(s: dict) -> batching.Decision:
        return batching.Decision(**handle(s))

    with tempfile.TemporaryDirectory(prefix="nslab-bench-policy-") as d:
        sock = os.path.join(d, "p.sock")
        link = PolicyLink(sock, "batching", {"estimate_s": est}, batching.Decision,
                          lambda s: batching.FALLBACK, batching._check, deadline_s=1.0)  # fmt: skip
        await link.start()
        runner = subprocess.Popen(
            [sys.executable, "-m", "nslab.policy.runner", "--connect", sock, SPEC]
        )
        try:
            await asyncio.wait_for(link.ready.wait(), 30)
            times: dict[str, list[float]] = {"inproc": [], "protocol": []}
            for _ in range(ROUNDS):
                for name, ask in (("inproc", inproc), ("protocol", link.ask)):
                    for s in states():
                        t0 = time.perf_counter()
                        await ask(s)
                        times[name].append((time.perf_counter() - t0) * 1e6)
        finally:
            runner.kill()
            runner.wait()
            await link.stop()
    assert sum(link.counts.values()) == link.counts["ok"], link.counts
    med = {k: statistics.median(v) for k, v in times.items()}
    p99 = sorted(times["protocol"])[int(0.99 * len(times["protocol"]))]
    print(f"load average {os.getloadavg()[0]:.1f}; {ROUNDS} x {N} decisions each")
    for k, v in med.items():
        print(f"  {k:9s} median {v:8.1f} us")
    print(f"  protocol  p99    {p99:8.1f} us")
    print(f"inproc_us={med['inproc']:.1f} protocol_us={med['protocol']:.1f} "
          f"protocol_p99_us={p99:.1f} ratio={med['protocol'] / med['inproc']:.1f}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
