"""`nslab serve`: run an inference pod, a dispatcher or an LLM server in the foreground
(e.g. inside a node: `nslab exec LAB NODE -- nslab serve pod --model digits`)."""

from __future__ import annotations

import argparse
import asyncio

from nslab.llm import cli as llm_cli
from nslab.serving import dispatcher, pod

VERB = "serve"
HELP = "run an inference pod (Open Inference Protocol), a dispatcher or an LLM server in the foreground"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="pod|dispatcher|llm")
    sub.required = True
    pod.add_pod_arguments(
        sub.add_parser("pod", help="serve one model (keys as in docs/serving.md)")
    )
    dispatcher.add_arguments(sub.add_parser("dispatcher", help="L7 front end over pods"))
    llm_cli.add_arguments(
        sub.add_parser("llm", help="an OpenAI-compatible LLM server (docs/llm.md)")
    )


def run(args: argparse.Namespace) -> int:
    if args.what == "llm":
        return llm_cli.run(args)
    if args.what == "pod":
        asyncio.run(pod.run_pod(pod.config_from_args(args)))
    else:
        asyncio.run(dispatcher.run_dispatcher(dispatcher.config_from_args(args)))
    return 0
