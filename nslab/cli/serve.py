"""`nslab serve`: run an inference pod or a dispatcher in the foreground
(e.g. inside a node: `nslab exec LAB NODE -- nslab serve pod --model digits`)."""

from __future__ import annotations

import argparse
import asyncio

from nslab.serving import dispatcher, pod

VERB = "serve"
HELP = "run an inference pod (Open Inference Protocol) or a dispatcher in the foreground"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="pod|dispatcher")
    sub.required = True
    pod.add_pod_arguments(
        sub.add_parser("pod", help="serve one model (keys as in docs/serving.md)")
    )
    dispatcher.add_arguments(sub.add_parser("dispatcher", help="L7 front end over pods"))


def run(args: argparse.Namespace) -> int:
    if args.what == "pod":
        asyncio.run(pod.run_pod(pod.config_from_args(args)))
    else:
        asyncio.run(dispatcher.run_dispatcher(dispatcher.config_from_args(args)))
    return 0
