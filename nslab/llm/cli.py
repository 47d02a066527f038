"""Command-line options of `nslab serve llm` (the heavy imports wait until it runs)."""

from __future__ import annotations

import argparse

MODELS = ("tiny", "smollm2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODELS, default="smollm2")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--served-model-name", help="the model id clients send (default: --model)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--num-blocks", type=int, default=512, help="KV blocks in the cache")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences per batch")
    p.add_argument(
        "--max-num-batched-tokens", type=int, default=256, help="token budget of one step"
    )
    p.add_argument("--max-model-len", type=int, default=2048, help="context length")
    p.add_argument("--max-waiting", type=int, default=256, help="queue size before 503s")
    p.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false", default=True)
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 on a busy machine)"
    )
    p.add_argument(
        "--policy",
        default="fcfs",
        help="admission policy: fcfs, shortest-first, or socket:PATH (a policy "
        "process connects there: nslab.llm.remote)",
    )
    p.add_argument(
        "--policy-deadline-ms",
        type=float,
        default=20.0,
        help="with socket:PATH, how long a step waits for the policy's answer",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from nslab.errors import NslabError
    from nslab.llm.engine import EngineConfig, LLMEngine
    from nslab.llm.policy import POLICIES
    from nslab.llm.server import OpenAIServer, serve

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    extra = None
    if args.policy.startswith("socket:"):
        from nslab.llm.remote import RemoteSchedulingPolicy

        policy = RemoteSchedulingPolicy(args.policy[7:], args.policy_deadline_ms / 1000)
        extra = policy.metrics_lines
    elif args.policy in POLICIES:
        policy = POLICIES[args.policy]()
    else:
        raise NslabError(
            f"--policy {args.policy}: choose one of {', '.join(POLICIES)} or socket:PATH"
        )
    for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens"):
        if getattr(args, name) < 1:
            raise NslabError(f"--{name.replace('_', '-')} must be at least 1")
    cfg = EngineConfig(
        device=args.device,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        prefix_caching=args.prefix_caching,
        max_waiting=args.max_waiting,
    )
    engine = LLMEngine.from_name(args.model, cfg, policy=policy)
    server = OpenAIServer(engine, args.served_model_name, extra_metrics=extra)
    asyncio.run(serve(server, args.host, args.port))
    return 0
