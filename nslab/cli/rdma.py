"""`nslab rdma perf TEST [SERVER]`: perftest-style RDMA tests (see docs/rdma.md)."""

from __future__ import annotations

import argparse

from nslab.errors import NslabError

VERB = "rdma"
HELP = "RDMA tools: perftest-style latency and bandwidth tests (nslab rdma perf ...)"


def _size(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        return int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 64, 4K, 1M)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nslab.rdma.perf import DEFAULT_PORT, TESTS

    sub = p.add_subparsers(dest="rdma_cmd", metavar="CMD")
    sub.required = True
    perf = sub.add_parser(
        "perf",
        help="like ib_write_lat/ib_read_bw...: server without address, client with",
        description="Run without SERVER_ADDR to be the server, with it to be the client "
        "(like perftest). Both sides print the table and exit when done.",
    )
    perf.add_argument("test", choices=TESTS, help="which test")
    perf.add_argument("server", nargs="?", metavar="SERVER_ADDR", help="the server's IPv4 address (client mode)")  # fmt: skip
    perf.add_argument("-s", "--size", type=_size, default=2, help="message size in bytes (default 2, like perftest)")  # fmt: skip
    perf.add_argument("-n", "--iters", type=int, default=None, help="iterations per size (default 1000)")  # fmt: skip
    perf.add_argument("-a", "--all", action="store_true", help="sweep sizes 2 B .. 8 MiB (iterations capped at 16 MiB per size)")  # fmt: skip
    perf.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help=f"TCP port to meet on (default {DEFAULT_PORT})")  # fmt: skip
    perf.add_argument("-m", "--mtu", type=int, default=1024, help="path MTU: 256..4096 (default 1024)")  # fmt: skip
    perf.add_argument("-t", "--tx-depth", type=int, default=32, help="operations in flight for bw tests (default 32)")  # fmt: skip
    perf.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds without the peer (default 60)")  # fmt: skip
    perf.add_argument("--bind", default="0.0.0.0", help="local IPv4 address to use (default all)")  # fmt: skip
    perf.add_argument("--datapath", choices=["native", "python"], help="the soft provider's data path (default: native where it built; see nslab doctor)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from nslab.rdma import perf

    if args.iters is not None and args.iters < 1:
        raise NslabError(f"-n {args.iters}: iterations must be at least 1")
    o = perf.Options(
        test=args.test, server=args.server, size=args.size, iters=args.iters, sweep=args.all,
        port=args.port, mtu=args.mtu, depth=max(1, args.tx_depth), timeout=args.timeout, bind=args.bind, datapath=args.datapath,
    )  # fmt: skip
    return perf.run(o)
