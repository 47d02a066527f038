"""Serving benchmark, in one run on loopback (about 2 minutes):

(a) overhead: p50 of the identity model over HTTP (nslab pod) minus the p50 of
    the same client against a minimal HTTP server answering a fixed 200. The
    two sides are measured in interleaved rounds (order alternating), so drift
    in the machine's load hits both alike; the result is the median of the
    per-round differences with a 95 % bootstrap confidence interval;
(b) the load generator's maximum accurate open-loop rate (against that minimal
    server): the highest rate whose achieved rate is within 5 % of the asked one
    and whose median send is at most 1 ms late;
(c) dynamic batching: the highest Poisson rate a `sim-gpu` pod (profile `slow`)
    sustains with p99 <= 100 ms, with batching vs without (gain = ratio);
(d) p99 of power-of-two-choices vs round-robin on heterogeneous pods (two fast,
    two slow) at 80 % of capacity (ratio p2c / rr; below 1 is better).

Usage: .venv/bin/python benchmarks/serving.py
The last line reads: overhead_ms=<n> overhead_ci95_ms=<lo>..<hi> batching_gain=<n> p2c_vs_rr_p99=<n>
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nslab.serving import load, local, models  # noqa: E402
from nslab.serving.http import Connection, Response, serve  # noqa: E402
from nslab.serving.stats import percentile  # noqa: E402

SLO_MS = 100.0
QUICK = {"warmup_s": 0.5, "window_s": 1.5, "stable_windows": 0, "max_windows": 2}


def bare_server_main() -> None:
    """The floor: an HTTP server (same HTTP layer, own process) answering every
    request with a fixed 200 and no work."""

    async def handler(req):
        return Response(200, b'{"ok":1}')

    async def main():
        srv = await serve(handler, "127.0.0.1", 0)
        print(f"READY {srv.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def closed_p50(url: str, path: str, body: bytes, n: int = 2000) -> float:
    """p50 (ms) of n sequential requests on one keep-alive connection."""

    async def main():
        host, port = url.removeprefix("http://").split(":")
        c = await Connection.open(host, int(port))
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            status, _, _ = await c.request("POST", path, body, timeout=5)
            lat.append(time.perf_counter() - t)
            assert status == 200
        c.close()
        return percentile(lat[n // 10 :], 50) * 1000

    return asyncio.run(main())


def overhead_rounds(
    pod_url: str, bare_url: str, body: bytes, rounds: int = 12, n: int = 400
) -> tuple[float, float, float, list[float], list[float]]:
    """Interleaved rounds of (pod, bare) p50s; the median per-round difference and
    its 95 % bootstrap confidence interval (ms)."""
    pods, bares = [], []
    for i in range(rounds):
        sides = [("pod", pod_url, "/v2/models/identity/infer"), ("bare", bare_url, "/")]
        if i % 2:
            sides.reverse()  # neither side always goes first
        got = {name: closed_p50(url, path, body, n) for name, url, path in sides}
        pods.append(got["pod"])
        bares.append(got["bare"])
    diffs = np.array(pods) - np.array(bares)
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(diffs, size=(5000, len(diffs))), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.median(diffs)), float(lo), float(hi), pods, bares


def rate_at_slo(url: str, rates: list[float]) -> tuple[float, list[load.LoadResult]]:
    """The highest throughput among rates whose p99 <= SLO without rejections."""
    best, runs = 0.0, []
    for rate in rates:
        r = load.run(url, "digits", rate=rate, slo_ms=SLO_MS, timeout_s=10, **QUICK)
        runs.append(r)
        print(f"      {r.line()}", flush=True)
        ok = r.latency["p99_ms"] <= SLO_MS and r.rejected == 0 and r.errors == 0
        if ok and r.throughput >= 0.9 * rate:
            best = max(best, r.throughput)
        elif best:
            break  # past the knee
    return best, runs


def main() -> int:
    repo = Path(tempfile.mkdtemp(prefix="tsrv_bench_models_"))
    os.environ["NSLAB_MODEL_REPO"] = str(repo)
    rows: list[tuple[str, str, str]] = []
    bare = None
    try:
        for name in models.BUILTIN:
            models.ensure(name, repo)
        bare = local._start([sys.executable, __file__, "--bare-server"], "bare server")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

        # (a) overhead
        print("(a) overhead of the serving stack (identity model, 1 client, 12 interleaved rounds)")
        body = load.payloads("identity", repo)[0].body
        with local.pods({"model": "identity"}) as (pod,):
            overhead, ci_lo, ci_hi, pods, bares = overhead_rounds(pod.url, bare.url, body)
        rows += [
            ("a", "p50 bare HTTP server (median of rounds)", f"{np.median(bares):.3f} ms"),
            ("a", "p50 identity via nslab pod (median of rounds)", f"{np.median(pods):.3f} ms"),
            (
                "a",
                "overhead (target <= 1 ms), 95 % CI",
                f"{overhead:.3f} ms [{ci_lo:.3f}, {ci_hi:.3f}]",
            ),
        ]

        # (b) load generator
        print("(b) load generator: highest accurate open-loop rate")
        max_ok = 0.0
        bodies = load.payloads("identity", repo)
        for rate in (500, 1000, 2000, 3000, 4000, 6000):
            r = load.run(
                bare.url,
                "identity",
                rate=rate,
                arrival="constant",
                bodies=bodies,
                path="/",
                **QUICK,
            )
            # Accurate: the rate asked for, and the typical send on time. The p99
            # lag is reported but not judged: on a shared box it measures the
            # other processes' scheduling more than the generator.
            accurate = abs(r.achieved_rate - rate) <= 0.05 * rate and r.send_lag_p50_ms <= 1.0
            print(
                f"      rate {rate}/s: sent {r.achieved_rate:.0f}/s, lag p50 "
                f"{r.send_lag_p50_ms:.2f} ms p99 {r.send_lag_p99_ms:.2f} ms "
                f"{'ok' if accurate else 'inaccurate'}",
                flush=True,
            )
            if not accurate:
                break
            max_ok = rate
        rows.append(("b", "max accurate open-loop rate", f"{max_ok:.0f} req/s"))

        # (c) batching
        print(f"(c) sim-gpu pod (profile slow): highest rate with p99 <= {SLO_MS:g} ms")
        base = {"model": "digits", "device": "sim-gpu", "profile": "slow", "queue_limit": 1024}
        with local.pods(base) as (pod,):
            print("    without batching")
            unb, _ = rate_at_slo(pod.url, [10, 15, 20, 25, 30, 35, 40, 45])
        with local.pods(dict(base, max_batch_size=32, max_queue_delay_us=20000)) as (pod,):
            print("    with dynamic batching (max_batch_size 32, max_queue_delay 20 ms)")
            bat, _ = rate_at_slo(pod.url, [100, 200, 300, 350, 400, 450, 500])
        gain = bat / unb if unb else float("nan")
        rows += [
            ("c", "throughput at p99 SLO, no batching", f"{unb:.1f} req/s"),
            ("c", "throughput at p99 SLO, batching", f"{bat:.1f} req/s"),
            ("c", "batching gain (target >= 4)", f"{gain:.2f}x"),
        ]

        # (d) dispatch policies
        print("(d) heterogeneous pods (2 x 20 ms, 2 x 40 ms; capacity 150/s) at 80 % load")
        fast = {
            "model": "digits",
            "device": "sim-gpu",
            "profile": "a=20,c=0,sat=1",
            "queue_limit": 64,
        }
        slow = dict(fast, profile="a=40,c=0,sat=1")
        cfgs = [
            dict(fast, name="f1"),
            dict(fast, name="f2"),
            dict(slow, name="s1"),
            dict(slow, name="s2"),
        ]
        p99 = {}
        with local.pods(*cfgs) as ps:
            fleet = [(c["name"], p.url) for c, p in zip(cfgs, ps, strict=True)]
            # Power of two choices is lab 4's answer, so not in the kit: the
            # lab's reference solution, loaded by the dispatcher from its file.
            from nslab.labs import labs_root

            p2c = f"{labs_root() / '04-load-balancing' / 'solution' / 'policies.py'}:PowerOfTwo"
            for policy in ("p2c", "round-robin"):
                local.wait_idle([u for _, u in fleet])
                d = local.start_dispatcher(fleet, p2c if policy == "p2c" else policy)
                try:
                    r = load.run(
                        d.url,
                        "digits",
                        rate=120,
                        slo_ms=500,
                        seed=5,
                        warmup_s=1,
                        window_s=2,
                        stable_windows=0,
                        max_windows=3,
                    )
                finally:
                    d.stop()
                print(f"      {policy}: {r.line()}", flush=True)
                p99[policy] = r.latency["p99_ms"]
        ratio = p99["p2c"] / p99["round-robin"]
        rows += [
            ("d", "p99 round-robin", f"{p99['round-robin']:.1f} ms"),
            ("d", "p99 power of two choices", f"{p99['p2c']:.1f} ms"),
            ("d", "p2c / round-robin p99", f"{ratio:.3f}"),
        ]
    finally:
        if bare is not None:
            bare.stop()
        shutil.rmtree(repo, ignore_errors=True)

    print()
    w = max(len(r[1]) for r in rows)
    for part, what, value in rows:
        print(f"  ({part}) {what:<{w}}  {value}")
    print(
        f"overhead_ms={overhead:.3f} overhead_ci95_ms={ci_lo:.3f}..{ci_hi:.3f} "
        f"batching_gain={gain:.2f} p2c_vs_rr_p99={ratio:.3f}"
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--bare-server"]:
        bare_server_main()
    else:
        np.seterr(all="ignore")
        sys.exit(main())
