"""LLM serving benchmark: the nslab.llm engine and its peers, side by side in one run.

(a) continuous batching vs static batching: the same Poisson arrivals of requests
    with mixed prompt and output lengths, served by the engine (requests join and
    leave between steps) and by Hugging Face `generate` on padded batches of 8
    (a batch starts when 8 requests wait, or the last ones have arrived, and runs
    until its longest output is done). Throughput = requested output tokens /
    (last completion - first arrival); TPOT p99 over requests.
(b) prefix caching on vs off: requests that share a long prefix (vLLM's
    prefix-repetition shape), one after another; TTFT p50 each way.
(c) one stream: tokens/s of the engine vs HF `generate`, same prompt, same length.
(d) 16 concurrent streams through HTTP: `nslab serve llm` vs llama.cpp's server
    (`llama-cpp-python[server]`, the pyproject `bench` extra, built from source) on the
    same SmolLM2 GGUF, both measured by the same `nslab bench serve` client with the
    same words as prompts; skipped, with a line saying why, where it is not installed.

(a)-(c) run in this process on the same fp32 weights, one side after the other.
Usage: .venv/bin/python benchmarks/llm.py [--model smollm2|tiny] [--requests 32] [--pairs abcd]
The last line reads: cb_gain=<n> prefix_ttft_gain=<n> single_stream_ratio=<n>
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nslab import process  # noqa: E402
from nslab.llm.engine import EngineConfig, LLMEngine  # noqa: E402
from nslab.llm.sequence import SamplingParams  # noqa: E402
from nslab.llm.weights import load  # noqa: E402
from nslab.ports import free_port  # noqa: E402


def hf_model(m):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(m.config.to_hf()).eval()
    hf.load_state_dict(m.state_dict)
    return hf


class TokenClock:
    """A generate() streamer that only notes when each step's tokens come out
    (the first put() is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_generate(hf, prompts: list[list[int]], n_new: int, pad: int) -> list[float]:
    """One padded (left) batch through HF generate, exactly n_new tokens each;
    returns when each of the n_new tokens came out."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    clock = TokenClock()
    with torch.inference_mode():
        hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            pad_token_id=pad,
            streamer=clock,
        )
    return clock.times[1:]


def workload(m, n: int, rate: float, seed: int, max_out: int):
    rng = random.Random(seed)
    vocab = m.config.vocab_size
    reqs, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        prompt = [
            rng.randrange(3, min(vocab, 256) if vocab < 1000 else vocab)
            for _ in range(rng.randint(16, 96))
        ]
        reqs.append((t, prompt, rng.randint(8, max_out)))
    return reqs


def run_static(hf, reqs, pad: int, batch: int = 8):
    """Static batching: wait for `batch` requests (or the last), run to the longest."""
    t0 = time.perf_counter()
    done, tpots, i = [], [], 0
    while i < len(reqs):
        group = reqs[i : i + batch]
        i += len(group)
        ready_at = group[-1][0]  # the batch starts when its last member has arrived
        now = time.perf_counter() - t0
        if now < ready_at:
            time.sleep(ready_at - now)
        n_new = max(out for _, _, out in group)
        times = hf_generate(hf, [p for _, p, _ in group], n_new, pad)
        end = time.perf_counter() - t0
        for _, _, out in group:
            # every member gets one token per decode step; TPOT as the engine's (and
            # vLLM's): from its first token to its last, the prefill left out
            if out > 1:
                tpots.append((times[out - 1] - times[0]) / (out - 1))
            done.append(end)
    makespan = max(done) - reqs[0][0]
    return sum(out for _, _, out in reqs) / makespan, tpots


def run_engine(eng: LLMEngine, reqs):
    t0 = time.perf_counter()
    pending = list(reqs)
    seqs = []
    while pending or eng.has_work():
        now = time.perf_counter() - t0
        while pending and pending[0][0] <= now:
            _, prompt, out = pending.pop(0)
            seqs.append(
                eng.add_request(
                    prompt, SamplingParams(temperature=0, max_tokens=out, ignore_eos=True)
                )
            )
        if eng.has_work():
            eng.step()
        elif pending:
            time.sleep(max(0.0, pending[0][0] - (time.perf_counter() - t0)))
    last = max(s.token_times[-1] for s in seqs)
    first_arrival = min(s.arrival for s in seqs)
    tpots = [
        (s.token_times[-1] - s.token_times[0]) / (len(s.token_times) - 1)
        for s in seqs
        if len(s.token_times) > 1
    ]
    return sum(len(s.output_ids) for s in seqs) / (last - first_arrival), tpots


def ttft_p50(eng: LLMEngine, prompts: list[list[int]]) -> float:
    ttfts = []
    for p in prompts:
        s = eng.add_request(p, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        while eng.has_work():
            eng.step()
        ttfts.append(s.first_token_time - s.arrival)
    return float(np.median(ttfts[1:]))  # the first request warms the cache in both runs


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def bench_serve(url: str, args, out_dir: str, name: str) -> dict:
    """The same `nslab bench serve` run against one server; its JSON result."""
    nslab = str(Path(sys.executable).with_name("nslab"))
    argv = [nslab, "bench", "serve", "--base-url", url, "--num-prompts", str(args.d_prompts)]
    argv += ["--max-concurrency", "16", "--random-input-len", "64", "--random-output-len"]
    argv += ["64", "--ignore-eos", "--no-tokenize", "--save-result", "--result-dir", out_dir]
    argv += ["--result-filename", name]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return json.loads((Path(out_dir) / name).read_text())


def pair_d(args, threads: int) -> tuple[dict, dict] | str:
    """Both OpenAI-compatible servers on the same GGUF; a reason string when skipped."""
    try:
        import llama_cpp.server.app  # noqa: F401  (the server extra, not only the library)
    except ImportError as exc:
        return (
            f"llama-cpp-python[server] is not installed ({exc}); `pip install -e '.[bench]'` "
            "builds it from source (about 15 minutes on 2 cores)"
        )
    from nslab.llm.weights import smollm2_path

    gguf = str(smollm2_path())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    nslab = str(Path(sys.executable).with_name("nslab"))
    ours_url, theirs_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    servers: list[process.Process] = []
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        try:
            argv = [nslab, "serve", "llm", "--model", "smollm2", "--threads", str(threads)]
            argv += ["--port", ours_url.rsplit(":", 1)[1]]
            servers.append(
                process.start(
                    argv, what="nslab serve llm", log=f"{tmp}/nslab.log", env=env,
                    ready=process.Ready(log=r"(?m)^READY ", timeout=180),
                )
            )  # fmt: skip
            # interrupt_requests off: by default a new request cuts the stream being served short
            argv = [sys.executable, "-m", "llama_cpp.server", "--model", gguf]
            argv += ["--host", "127.0.0.1", "--port", theirs_url.rsplit(":", 1)[1]]
            argv += ["--n_ctx", "2048"]
            argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
            argv += ["--interrupt_requests", "False", "--verbose", "False"]
            servers.append(
                process.start(
                    argv, what="llama_cpp.server", log=f"{tmp}/llamacpp.log", env=env,
                    ready=process.Ready(probe=lambda: _answers(theirs_url), timeout=180),
                )
            )  # fmt: skip
            return (
                bench_serve(ours_url, args, tmp, "nslab.json"),
                bench_serve(theirs_url, args, tmp, "llamacpp.json"),
            )
        finally:
            for server in servers:
                server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    ap.add_argument("--pairs", default="abcd", help="which pairs to run, e.g. ad")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rate", type=float, default=8.0, help="Poisson arrivals, req/s, for (a)")
    ap.add_argument("--max-output", type=int, default=128, help="outputs are 8..this tokens")
    # (a): more sequences than HF's 8, and a small token budget. On a CPU a step costs a
    # fixed part plus about the same per token, decode or prefill, so a fixed budget is a
    # fixed step time: new prompts are prefilled a few tokens per step beside the decodes,
    # and no step stalls the streams for a whole prompt (Sarathi's point). 20 and 28 keep
    # a step below HF's batch-8 decode step (docs/llm.md).
    ap.add_argument("--max-num-seqs", type=int, default=20, help="engine, for (a)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=28, help="engine, for (a)")
    ap.add_argument("--prefix-len", type=int, default=512)
    ap.add_argument("--stream-tokens", type=int, default=64)
    ap.add_argument("--d-prompts", type=int, default=32, help="requests per server in (d)")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads for both sides (on a busy shared machine 1 beats 2: "
        "waiting for a descheduled OpenMP thread stalls every op)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"torch threads {torch.get_num_threads()}"
    )
    m = load(args.model)
    hf = hf_model(m)
    pad = m.config.eos_token_id or 0
    cfg = EngineConfig(
        num_blocks=1024,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    rows = []
    cb_gain = prefix_gain = ratio = float("nan")
    rng = random.Random(2)
    top = m.config.vocab_size if m.config.vocab_size > 1000 else 256

    if "a" in args.pairs:
        print(
            f"(a) {args.requests} requests, Poisson {args.rate}/s, prompts 16-96, "
            f"outputs 8-{args.max_output} tokens; engine: {cfg.max_num_seqs} sequences, "
            f"{cfg.max_num_batched_tokens} tokens per step"
        )
        reqs = workload(m, args.requests, args.rate, seed=1, max_out=args.max_output)
        static_tps, static_tpot = run_static(hf, reqs, pad)
        eng_tps, eng_tpot = run_engine(LLMEngine(m, cfg), reqs)
        cb_gain = eng_tps / static_tps
        rows += [
            (
                "a",
                "static batches of 8 (HF generate)",
                f"{static_tps:.1f} tok/s, TPOT p99 {np.percentile(static_tpot, 99) * 1000:.1f} ms",
            ),
            (
                "a",
                "continuous batching (engine)",
                f"{eng_tps:.1f} tok/s, TPOT p99 {np.percentile(eng_tpot, 99) * 1000:.1f} ms",
            ),
            ("a", "cb_gain (target >= 3)", f"{cb_gain:.2f}x"),
        ]
        print(*rows[-3:], sep="\n", flush=True)

    if "b" in args.pairs:
        gc.collect()
        print(
            f"(b) 9 requests sharing a {args.prefix_len}-token prefix, 16-token suffixes, "
            "one at a time"
        )
        prefix = [rng.randrange(3, top) for _ in range(args.prefix_len)]
        prompts = [prefix + [rng.randrange(3, top) for _ in range(16)] for _ in range(9)]
        off = ttft_p50(LLMEngine(m, EngineConfig(num_blocks=1024, prefix_caching=False)), prompts)
        on = ttft_p50(LLMEngine(m, EngineConfig(num_blocks=1024, prefix_caching=True)), prompts)
        prefix_gain = off / on
        rows += [
            ("b", "TTFT p50, prefix caching off", f"{off * 1000:.1f} ms"),
            ("b", "TTFT p50, prefix caching on", f"{on * 1000:.1f} ms"),
            ("b", "prefix_ttft_gain (target >= 3)", f"{prefix_gain:.2f}x"),
        ]
        print(*rows[-3:], sep="\n", flush=True)

    if "c" in args.pairs:
        gc.collect()  # the engines of (a) and (b) hold GBs of KV cache (engine <-> metrics cycle)
        n = args.stream_tokens
        print(f"(c) one stream, {n} tokens after a 45-token prompt")
        prompt = [rng.randrange(3, top) for _ in range(45)]
        hf_generate(hf, [prompt], 4, pad)  # warm up both sides
        eng = LLMEngine(m, cfg)
        eng.generate([prompt], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        hf_s, eng_s = [], []
        for _ in range(3):  # interleaved, median of three
            t = time.perf_counter()
            hf_generate(hf, [prompt], n, pad)
            hf_s.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            eng.generate([prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
            eng_s.append(n / (time.perf_counter() - t))
        ratio = float(np.median(eng_s) / np.median(hf_s))
        rows += [
            ("c", "HF generate, one stream", f"{np.median(hf_s):.1f} tok/s"),
            ("c", "engine, one stream", f"{np.median(eng_s):.1f} tok/s"),
            ("c", "single_stream_ratio (target >= 1)", f"{ratio:.2f}x"),
        ]
        print(*rows[-3:], sep="\n", flush=True)

    if "d" in args.pairs and args.model != "smollm2":
        rows.append(("d", "skipped", "llama.cpp serves the SmolLM2 GGUF only (--model smollm2)"))
        print(rows[-1])
    elif "d" in args.pairs:
        print(
            f"(d) {args.d_prompts} requests, 16 in flight, 64 words in, 64 tokens out, "
            "through HTTP: nslab serve llm vs llama.cpp's server on the same GGUF"
        )
        del hf  # the servers run in their own processes
        got = pair_d(args, args.threads or torch.get_num_threads())
        if isinstance(got, str):
            rows.append(("d", "skipped", got))
            print(rows[-1])
        else:
            ours, theirs = got
            for who, res in (("nslab serve llm (fp32)", ours), ("llama.cpp server (Q4_1)", theirs)):
                rows.append(
                    (
                        "d",
                        who,
                        f"{res['output_throughput']:.1f} tok/s, TTFT p50 "
                        f"{res['median_ttft_ms']:.0f} ms, TPOT p50 {res['median_tpot_ms']:.0f} ms, "
                        f"{res['failed']} failed",
                    )
                )
            d_ratio = ours["output_throughput"] / theirs["output_throughput"]
            rows.append(("d", "nslab / llama.cpp throughput", f"{d_ratio:.2f}x"))
            print(*rows[-3:], sep="\n", flush=True)

    print()
    for part, what, value in rows:
        print(f"({part}) {what:<40} {value}")
    print(
        f"cb_gain={cb_gain:.2f} prefix_ttft_gain={prefix_gain:.2f} single_stream_ratio={ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
