"""Shared command line for NF programs (lab NFs): interface names as
positional arguments, `--report`, `--duration`; writes the report on exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from nslab.errors import NslabError
from nslab.nf.guard import KernelGuard
from nslab.nf.router import IO_BACKENDS, Router, main_for


def nf_main(
    name: str,
    interfaces: Sequence[tuple[str, str]],
    build: Callable[[Router, argparse.Namespace], None],
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
    doc: str | None = None,
) -> int:
    """Parse `<prog> IF1 IF2 ... [--report PATH] [--duration S]`, build the
    router with `build(router, args)` and run it until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(prog=name, description=doc)
    for iface, help_text in interfaces:
        ap.add_argument(iface, help=help_text)
    ap.add_argument(
        "--report",
        help=f"report path (default: $NSLAB_REPORT_DIR/{name}.report, else ./{name}.report)",
    )
    ap.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until signalled)"
    )
    ap.add_argument(
        "--keep-kernel",
        action="store_true",
        help="leave the kernel's IP stack on the interfaces (default: nftables drops "
        "what arrives on them before the kernel sees it; the NF answers for its addresses)",
    )
    ap.add_argument(
        "--io",
        choices=IO_BACKENDS,
        default=os.environ.get("NSLAB_NF_IO") or "afpacket",
        help="frame I/O: afpacket (raw sockets, default) or afxdp (AF_XDP sockets in copy mode; "
        "needs CAP_BPF too)",
    )
    if options:
        options(ap)
    args = ap.parse_args(argv)
    report = args.report or str(Path(os.environ.get("NSLAB_REPORT_DIR", ".")) / f"{name}.report")
    router = Router(name, report=report, io=args.io)
    try:
        build(router, args)
    except NslabError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    ifaces = [getattr(args, i) for i, _ in interfaces]
    # NSLAB_NF_GUARD=external: the operator already installed the guard (lab 1's NF
    # containers get it with Ansible: nslab.nf.apply, template guard)
    if args.keep_kernel or os.environ.get("NSLAB_NF_GUARD") == "external":
        return main_for(router, args.duration)
    with KernelGuard(ifaces, tag=name):
        return main_for(router, args.duration)
