"""`nslab bench serve`: benchmark an OpenAI-compatible server, like `vllm bench serve`."""

from __future__ import annotations

import argparse

VERB = "bench"
HELP = "benchmark a server under load (serve: any OpenAI-compatible LLM server)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nslab.llm import bench

    sub = p.add_subparsers(dest="what", metavar="serve")
    sub.required = True
    bench.add_arguments(
        sub.add_parser("serve", help="TTFT, TPOT, ITL, throughput and goodput (docs/llm.md)")
    )


def run(args: argparse.Namespace) -> int:
    from nslab.llm import bench

    return bench.main(args)
