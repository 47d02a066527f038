"""nslab doctor [--json]: what this host can do, and what it means for the labs."""

from __future__ import annotations

import argparse
import json

from nslab.host import probe

VERB = "doctor"
HELP = "report each capability (real, fallback or missing) and what it means for the labs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object, a key per capability")


def run(args: argparse.Namespace) -> int:
    caps = probe()
    # kernel bypass (lab 06): XDP generic/native, AF_XDP copy/zero-copy, BTF, tried on a veth
    from nslab.xdp.probe import capabilities as xdp_capabilities

    caps += xdp_capabilities()
    # LLM serving (nslab.llm, lab 05): PyTorch, the model wheels, a GPU or the CPU
    from nslab.llm.probe import capabilities as llm_capabilities

    caps += llm_capabilities()
    if args.json:
        print(
            json.dumps(
                {c.name: {k: v for k, v in c.as_dict().items() if k != "name"} for c in caps},
                indent=1,
            )
        )
        return 0
    mark = {"real": "ok  ", "fallback": "fall", "missing": "MISS"}
    for c in caps:
        print(f"[{mark[c.status]}] {c.name:<8} {c.detail}")
        if c.impact:
            print(f"{'':16}-> {c.impact}")
    return 0
