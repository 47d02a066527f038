"""`nslab images build [NAME...]` and `nslab images list`."""

from __future__ import annotations

import argparse
import sys
import time

from nslab import images

VERB = "images"
HELP = "build and list the container images of NFs and pods (offline, cached by input hash)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="images_cmd", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("build", help="build images whose inputs changed (all by default)")
    b.add_argument("names", nargs="*", metavar="NAME", help="images to build (with their parents)")
    b.add_argument("--force", action="store_true", help="rebuild even when the hash tag exists")
    b.add_argument(
        "--base",
        choices=images.BASE_SOURCES,
        default=None,
        help="local: debootstrap + docker import, no registry (default; env NSLAB_BASE_SOURCE); "
        "registry: FROM debian:bookworm-slim",
    )
    sub.add_parser("list", help="show each image's current hash tag and whether it is built")
    sub.add_parser(
        "prune", help="remove old hash tags of nslab's images (keeps current and latest)"
    )


def _progress(line: str) -> None:
    print(f"[images] {line}", flush=True)


def run(args: argparse.Namespace) -> int:
    if args.images_cmd == "build":
        t0 = time.monotonic()
        results = images.build(
            args.names or None, force=args.force, base_source=args.base, progress=_progress
        )
        built = [r.name for r in results if not r.cached]
        what = f"built {', '.join(built)}" if built else "all cached"
        print(f"[images] done in {time.monotonic() - t0:.1f} s: {what}")
        return 0
    if args.images_cmd == "prune":
        removed = images.prune(progress=_progress)
        print(f"[images] removed {len(removed)} old tag(s)")
        return 0
    rows = images.status()
    print(f"{'NAME':<10} {'TAG':<32} {'STATE':<8} {'SIZE':>8}  CREATED")
    for r in rows:
        state = "built" if r.built else "missing"
        if r.built and not r.latest_current:
            state = "built*"  # :latest points elsewhere until the next build
        size = f"{r.size_mb:.0f}MB" if r.size_mb is not None else "-"
        print(f"{r.name:<10} {r.tag:<32} {state:<8} {size:>8}  {r.created or '-'}")
    if any(not r.built for r in rows):
        print("missing images: run `sudo nslab images build`", file=sys.stderr)
    return 0
