"""`nslab bench serve`: a load generator for any OpenAI-compatible server, shaped
after `vllm bench serve` (its options, its report lines, its JSON keys), so what
students learn here carries over.

Each request streams (SSE) with `stream_options.include_usage`, so TTFT, ITL
and TPOT come from when chunks arrive, and token counts from the server's own
usage. A request fails when the HTTP status is not 200, the stream carries an
error, the connection breaks or nothing is generated; failures are counted,
and the first of them printed, never dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np

from nslab.errors import NslabError

# Common English words: prompts of a known word count when the server cannot tokenize.
WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which "
    "this be or has had first one their its new after who they have her she two been "
    "other when there all during into school time may years more most only over city "
    "some world would where later up such used many can state about national out known "
    "university united then made"
).split()


@dataclass
class Request:
    prompt: str | list[int] | list[dict]  # text, token ids, or chat messages
    prompt_len: int
    output_len: int


@dataclass
class Result:
    ok: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    text: str = ""
    error: str = ""
    start: float = 0.0


# -- datasets ------------------------------------------------------------------------


class Tokens:
    """Token ids from the server's /tokenize (vLLM and nslab have it), else words."""

    def __init__(self, client, base_url: str, model: str, exact: bool = True):
        self.client, self.base_url, self.model = client, base_url, model
        self.exact = exact

    async def ids(self, text: str) -> list[int] | None:
        if not self.exact:
            return None
        try:
            r = await self.client.post(
                self.base_url + "/tokenize", json={"model": self.model, "prompt": text}
            )
            if r.status_code == 200:
                return list(r.json()["tokens"])
        except Exception:
            pass
        self.exact = False
        return None


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(n, 1)))


async def _prompt(tok: Tokens, rng: random.Random, n: int, prefix: list | str = "") -> Request:
    text = _words(rng, n * 2)  # words are >= 1 token; cut to n tokens below
    ids = await tok.ids(text)
    if ids is not None:
        body = list(prefix) + ids[:n]
        return Request(body, len(body), 0)
    words = " ".join(text.split()[:n])
    body = f"{prefix} {words}".strip() if prefix else words
    return Request(body, len(body.split()), 0)


async def build_requests(args, tok: Tokens) -> list[Request]:
    rng = random.Random(args.seed)
    reqs: list[Request] = []
    name = args.dataset_name.replace("_", "-")
    if name == "random":
        r = args.random_range_ratio
        for _ in range(args.num_prompts):
            n_in = rng.randint(
                int(args.random_input_len * (1 - r)), int(args.random_input_len * (1 + r))
            )
            n_out = rng.randint(
                int(args.random_output_len * (1 - r)), int(args.random_output_len * (1 + r))
            )
            req = await _prompt(tok, rng, max(n_in, 1))
            req.output_len = max(n_out, 1)
            reqs.append(req)
    elif name == "prefix-repetition":
        prefixes = []
        for _ in range(args.prefix_repetition_num_prefixes):
            p = await _prompt(tok, rng, args.prefix_repetition_prefix_len)
            prefixes.append(p.prompt)
        for i in range(args.num_prompts):
            req = await _prompt(
                tok, rng, args.prefix_repetition_suffix_len, prefixes[i % len(prefixes)]
            )
            req.output_len = args.prefix_repetition_output_len
            reqs.append(req)
        rng.shuffle(reqs)
    elif name == "chat":
        trace = json.loads(
            resources.files("nslab.llm").joinpath("data/chat_trace.json").read_text()
        )
        for i in range(args.num_prompts):
            conv = trace[i % len(trace)]
            n_in = sum(len(m["content"].split()) for m in conv["messages"])
            reqs.append(Request(conv["messages"], n_in, conv["output_len"]))
    else:
        raise NslabError(
            f"--dataset-name {args.dataset_name}: choose random, prefix-repetition or chat"
        )
    return reqs


# -- sending -------------------------------------------------------------------------


async def send(client, url: str, model: str, req: Request, ignore_eos: bool) -> Result:
    chat = isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], dict)
    body = {
        "model": model,
        "max_tokens": req.output_len,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        # vLLM's flag, and OpenAI-style servers' min_tokens (llama.cpp's knows only that)
        body["ignore_eos"] = True
        body["min_tokens"] = req.output_len
    body["messages" if chat else "prompt"] = req.prompt
    res = Result(prompt_len=req.prompt_len)
    res.start = t0 = time.perf_counter()
    last, chunks, usage = t0, 0, None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                res.error = (
                    f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                )
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    res.error = f"stream error: {obj['error']}"
                    return res
                if obj.get("usage"):
                    usage = obj["usage"]
                for ch in obj.get("choices") or []:
                    piece = (
                        ch.get("text") if "text" in ch else (ch.get("delta") or {}).get("content")
                    )
                    if piece:
                        now = time.perf_counter()
                        if chunks == 0:
                            res.ttft = now - t0
                        else:
                            res.itl.append(now - last)
                        last, chunks = now, chunks + 1
                        res.text += piece
    except Exception as exc:  # connection refused, reset, timeout, bad JSON
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    res.latency = time.perf_counter() - t0
    if usage:
        res.output_tokens = usage.get("completion_tokens", chunks)
        res.prompt_len = usage.get("prompt_tokens", res.prompt_len)
    else:
        res.output_tokens = chunks
    if chunks == 0:
        res.error = "no tokens generated"
        return res
    res.ok = True
    return res


def arrival_gaps(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps between requests: gamma with shape `burstiness` (1 = Poisson) and mean 1/rate."""
    if rate == float("inf"):
        return [0.0] * n
    rng = np.random.default_rng(seed)
    return list(rng.gamma(burstiness, 1.0 / (rate * burstiness), size=n))


async def run_bench(args) -> dict:
    import httpx

    base = args.base_url or f"http://{args.host}:{args.port}"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(args.timeout, connect=10)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        model = args.model
        if not model:
            try:
                r = await client.get(base + "/v1/models")
                model = r.json()["data"][0]["id"]
            except Exception as exc:
                raise NslabError(
                    f"{base}/v1/models: {exc}; is the server up? (or pass --model)"
                ) from None
        reqs = await build_requests(args, Tokens(client, base, model, not args.no_tokenize))
        chat = args.dataset_name == "chat"
        url = base + (args.endpoint or ("/v1/chat/completions" if chat else "/v1/completions"))
        sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

        async def one(req):
            if sem is None:
                return await send(client, url, model, req, args.ignore_eos)
            async with sem:
                return await send(client, url, model, req, args.ignore_eos)

        gaps = arrival_gaps(len(reqs), args.request_rate, args.burstiness, args.seed)
        t0 = time.perf_counter()
        tasks = []
        for req, gap in zip(reqs, gaps, strict=True):
            tasks.append(asyncio.create_task(one(req)))
            if gap:
                await asyncio.sleep(gap)
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    return summarize(args, model, results, duration)


# -- the report ---------------------------------------------------------------------


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    slos = {}
    for item in items or []:
        key, _, ms = item.partition(":")
        if key not in ("ttft", "tpot", "e2el"):
            raise NslabError(f"--goodput {item}: the key must be ttft, tpot or e2el")
        try:
            slos[key] = float(ms)
        except ValueError:
            raise NslabError(f"--goodput {item}: {ms!r} is not a number of milliseconds") from None
        if slos[key] <= 0:
            raise NslabError(f"--goodput {item}: the SLO must be > 0 ms")
    return slos


def summarize(args, model: str, results: list[Result], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl]
    slos = parse_goodput(args.goodput)
    good = 0
    for r in ok:
        tpot = (r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
        meas = {"ttft": r.ttft, "tpot": tpot, "e2el": r.latency}
        good += all(meas[k] * 1000 <= v for k, v in slos.items())
    n_in = sum(r.prompt_len for r in ok)
    n_out = sum(r.output_tokens for r in ok)
    out = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if args.dataset_name == "chat" else "openai",
        "model_id": model,
        "tokenizer_id": model,
        "num_prompts": len(results),
        "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "duration": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "request_throughput": len(ok) / duration,
        "request_goodput": good / duration if slos else None,
        "output_throughput": n_out / duration,
        "total_token_throughput": (n_in + n_out) / duration,
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_tokens for r in results],
        "ttfts": [r.ttft for r in results],
        "itls": [r.itl for r in results],
        "generated_texts": [r.text for r in results],
        "errors": [r.error for r in results],
    }
    pcts = [float(p) for p in args.metric_percentiles.split(",")]
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": tpots,
        "itl": itls,
        "e2el": [r.latency for r in ok],
    }
    for key, vals in series.items():
        ms = np.array(vals or [0.0]) * 1000
        out[f"mean_{key}_ms"] = float(ms.mean())
        out[f"median_{key}_ms"] = float(np.median(ms))
        out[f"std_{key}_ms"] = float(ms.std())
        for p in pcts:
            out[f"p{p:g}_{key}_ms"] = float(np.percentile(ms, p))
    out["percentiles"] = pcts
    out["goodput_slos_ms"] = slos
    return out


NAMES = {
    "ttft": ("Time to First Token", "TTFT"),
    "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
    "itl": ("Inter-token Latency", "ITL"),
    "e2el": ("End-to-end Latency", "E2EL"),
}


def report(res: dict, metrics: list[str]) -> str:
    def line(label, value, fmt="{:<10.2f}"):
        return f"{label:<40}{fmt.format(value) if not isinstance(value, str) else value}"

    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]
    lines.append(line("Successful requests:", res["completed"], "{:<10}"))
    lines.append(line("Failed requests:", res["failed"], "{:<10}"))
    if res["max_concurrency"]:
        lines.append(line("Maximum request concurrency:", res["max_concurrency"], "{:<10}"))
    lines.append(line("Request rate configured (RPS):", res["request_rate"], "{:<10.2f}"))
    lines.append(line("Benchmark duration (s):", res["duration"]))
    lines.append(line("Total input tokens:", res["total_input_tokens"], "{:<10}"))
    lines.append(line("Total generated tokens:", res["total_output_tokens"], "{:<10}"))
    lines.append(line("Request throughput (req/s):", res["request_throughput"]))
    if res["request_goodput"] is not None:
        lines.append(line("Request goodput (req/s):", res["request_goodput"]))
    lines.append(line("Output token throughput (tok/s):", res["output_throughput"]))
    lines.append(line("Total Token throughput (tok/s):", res["total_token_throughput"]))
    for key in metrics:
        title, short = NAMES[key]
        lines.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        lines.append(line(f"Mean {short} (ms):", res[f"mean_{key}_ms"]))
        lines.append(line(f"Median {short} (ms):", res[f"median_{key}_ms"]))
        for p in res["percentiles"]:
            lines.append(line(f"P{p:g} {short} (ms):", res[f"p{p:g}_{key}_ms"]))
    lines.append("=" * 50)
    errors = [e for e in res["errors"] if e]
    if errors:
        lines.append(f"{len(errors)} failed; the first: {errors[0]}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", help="e.g. http://127.0.0.1:8000 (default: --host/--port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", help="default /v1/completions (/v1/chat/completions for chat)")
    p.add_argument("--model", help="default: the first of the server's /v1/models")
    p.add_argument("--dataset-name", default="random", help="random, prefix-repetition or chat")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--random-input-len", type=int, default=128)
    p.add_argument("--random-output-len", type=int, default=32)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--prefix-repetition-prefix-len", type=int, default=256)
    p.add_argument("--prefix-repetition-suffix-len", type=int, default=32)
    p.add_argument("--prefix-repetition-num-prefixes", type=int, default=4)
    p.add_argument("--prefix-repetition-output-len", type=int, default=32)
    p.add_argument(
        "--request-rate", type=float, default=float("inf"), help="req/s (inf: all at once)"
    )
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 is Poisson")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument(
        "--ignore-eos", action="store_true", help="fixed output lengths (vLLM's extension)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600, help="seconds per request")
    p.add_argument("--percentile-metrics", default="ttft,tpot,itl", help="of ttft,tpot,itl,e2el")
    p.add_argument("--metric-percentiles", default="99", help="e.g. 50,90,99")
    p.add_argument("--goodput", nargs="+", metavar="KEY:MS", help="SLOs, e.g. ttft:500 tpot:100")
    p.add_argument("--save-result", action="store_true", help="write the result as JSON")
    p.add_argument("--result-dir", default=".")
    p.add_argument("--result-filename", help="default: openai-<rate>qps-<model>-<date>.json")
    p.add_argument(
        "--no-tokenize",
        action="store_true",
        help="send random prompts as words, not token ids from /tokenize "
        "(two servers then get the same text)",
    )
    p.add_argument("--plot", metavar="PNG", help="TTFT against prompt length, as a picture")
    p.add_argument(
        "--sweep-max-concurrency",
        metavar="N,N,...",
        help="run once per --max-concurrency value (e.g. 1,2,4,8,16) and print a table",
    )
    p.add_argument(
        "--plot-throughput",
        metavar="PNG|SVG",
        help="with --sweep-max-concurrency: output throughput and TPOT against concurrency",
    )


def check_args(args) -> list[str]:
    if args.num_prompts < 1:
        raise NslabError("--num-prompts must be at least 1")
    if args.request_rate <= 0 or args.burstiness <= 0:
        raise NslabError("--request-rate and --burstiness must be > 0")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise NslabError("--max-concurrency must be at least 1")
    metrics = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in NAMES]
    if bad:
        raise NslabError(f"--percentile-metrics: unknown {bad}; choose from ttft,tpot,itl,e2el")
    try:
        [float(p) for p in args.metric_percentiles.split(",")]
    except ValueError:
        raise NslabError(
            f"--metric-percentiles {args.metric_percentiles}: numbers, e.g. 50,99"
        ) from None
    parse_goodput(args.goodput)
    if args.sweep_max_concurrency is not None:
        sweep_levels(args.sweep_max_concurrency)
    elif args.plot_throughput:
        raise NslabError("--plot-throughput needs --sweep-max-concurrency, e.g. 1,2,4,8,16")
    return metrics


def sweep_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise NslabError(
            f"--sweep-max-concurrency {text}: give concurrencies >= 1 separated by commas, "
            "e.g. 1,2,4,8,16"
        )
    return levels


def plot(results: dict | list[dict], path: str) -> None:
    """TTFT against prompt length; one colour per run of a sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results if isinstance(results, list) else [results]
    fig, ax = plt.subplots(figsize=(6, 4))
    for res in runs:
        ok = [e == "" for e in res["errors"]]
        x = [n for n, good in zip(res["input_lens"], ok, strict=True) if good]
        y = [t * 1000 for t, good in zip(res["ttfts"], ok, strict=True) if good]
        label = f"concurrency {res['max_concurrency']}" if len(runs) > 1 else None
        ax.scatter(x, y, s=12, label=label)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    res = runs[-1]
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title(f"{res['model_id']}: TTFT against context length")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_throughput(results: list[dict], path: str) -> None:
    """Output throughput (and median TPOT, the price of it) against max concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["max_concurrency"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["output_throughput"] for r in results], "o-", label="output tok/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(c) for c in x])
    ax.set_xlabel("max concurrency (requests in flight)")
    ax.set_ylabel("output throughput (tok/s)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(x, [r["median_tpot_ms"] for r in results], "s--", color="C1", label="median TPOT")
    ax2.set_ylabel("median TPOT (ms)")
    ax2.set_ylim(bottom=0)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    ax.set_title(f"{results[0]['model_id']}: throughput against concurrency")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sweep_table(results: list[dict]) -> str:
    head = f"{'concurrency':>11} {'req/s':>7} {'out tok/s':>9} {'TTFT p50':>9} {'TPOT p50':>9} {'failed':>6}"
    rows = [
        f"{r['max_concurrency']:>11} {r['request_throughput']:>7.2f} {r['output_throughput']:>9.1f}"
        f" {r['median_ttft_ms']:>9.1f} {r['median_tpot_ms']:>9.1f} {r['failed']:>6}"
        for r in results
    ]
    return "\n".join(
        ["{s:{c}^{n}}".format(s=" Sweep over max concurrency ", n=len(head), c="="), head, *rows]
    )


def _file_part(model_id: str) -> str:
    """A model id fit for a file name (llama.cpp's server names its model by its path)."""
    return Path(model_id).name.replace(" ", "_") or "model"


def sweep(args, metrics: list[str]) -> int:
    results = []
    for level in sweep_levels(args.sweep_max_concurrency):
        args.max_concurrency = level
        res = asyncio.run(run_bench(args))
        print(report(res, metrics), flush=True)
        results.append(res)
    print(sweep_table(results))
    if args.save_result:
        name = args.result_filename or (
            f"sweep-concurrency-{_file_part(results[0]['model_id'])}-{results[0]['date']}.json"
        )
        path = Path(args.result_dir) / name
        path.write_text(json.dumps({"sweep": "max_concurrency", "results": results}, indent=1))
        print(f"saved {path}")
    if args.plot_throughput:
        plot_throughput(results, args.plot_throughput)
        print(f"plot {args.plot_throughput}")
    if args.plot:
        plot(results, args.plot)
        print(f"plot {args.plot}")
    return 0 if all(r["completed"] for r in results) else 1


def main(args) -> int:
    metrics = check_args(args)
    if args.sweep_max_concurrency is not None:
        return sweep(args, metrics)
    res = asyncio.run(run_bench(args))
    print(report(res, metrics))
    if args.save_result:
        name = args.result_filename or (
            f"openai-{res['request_rate']}qps-{_file_part(res['model_id'])}-{res['date']}.json"
        )
        path = Path(args.result_dir) / name
        path.write_text(json.dumps(res, indent=1))
        print(f"saved {path}")
    if args.plot:
        plot(res, args.plot)
        print(f"plot {args.plot}")
    return 0 if res["completed"] else 1
