"""`nslab load`: measure an inference endpoint (pod or dispatcher)."""

from __future__ import annotations

import argparse

from nslab.errors import NslabError
from nslab.serving import load

VERB = "load"
HELP = "generate inference load (open or closed loop) and report latency, throughput, goodput"


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{s!r}: expected numbers separated by commas") from exc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="endpoint, e.g. http://10.0.0.2:8000")
    p.add_argument("--model", default="digits", help="model name (default digits)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--rate", type=_floats, help="open loop: requests/s, or a sweep: 50,100,200")
    g.add_argument("--concurrency", type=_floats, help="closed loop: clients, or a sweep: 1,2,4")
    p.add_argument("--arrival", default="poisson", choices=load.ARRIVALS)
    p.add_argument(
        "--cv", type=float, default=2.0, help="gamma arrivals: burstiness (CV, default 2)"
    )
    p.add_argument("--slo-ms", type=float, help="latency SLO for goodput")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--window-s", type=float, default=2.0, help="measurement window (default 2 s)")
    p.add_argument(
        "--stable-windows", type=int, default=3, help="windows that must agree (0 = fixed)"
    )
    p.add_argument("--stability-pct", type=float, default=10.0)
    p.add_argument("--max-windows", type=int, default=10)
    p.add_argument("--timeout-s", type=float, default=10.0, help="per-request timeout")
    p.add_argument("--rows", type=int, default=1, help="items per request (default 1)")
    p.add_argument("--verify", action="store_true", help="check outputs against the local model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for results.json/.csv and plots (PNG, SVG)")
    p.add_argument("--title", default="", help="plot title")


def run(args: argparse.Namespace) -> int:
    kw = dict(
        arrival=args.arrival,
        cv=args.cv,
        slo_ms=args.slo_ms,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        stable_windows=args.stable_windows,
        stability_pct=args.stability_pct,
        max_windows=args.max_windows,
        timeout_s=args.timeout_s,
        rows=args.rows,
        verify=args.verify,
        seed=args.seed,
    )
    if args.rate:
        results = load.sweep(args.url, args.model, rates=args.rate, progress=True, **kw)
    else:
        conc = [int(c) for c in args.concurrency]
        if any(c < 1 for c in conc):
            raise NslabError("--concurrency values must be >= 1")
        results = load.sweep(args.url, args.model, concurrencies=conc, progress=True, **kw)
    if args.out:
        for path in load.write(results, args.out, args.title):
            print(f"wrote {path}")
    failed = sum(r.errors + r.mismatches for r in results)
    if results and all(r.ok == 0 for r in results):
        raise NslabError(f"no request succeeded against {args.url} (check the URL and model name)")
    return 1 if failed and args.verify else 0
