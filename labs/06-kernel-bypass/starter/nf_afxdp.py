"""Lab 6, part 3: a transparent NF that drops UDP to one port and forwards
everything else between two interfaces, built with nslab's NF toolkit.
The same code must run over AF_PACKET (--io afpacket) and AF_XDP (--io afxdp):
nf_main gives your program the --io flag; you do not open sockets yourself.

    python nf_afxdp.py eth0 eth1 --block 5353 --io afxdp
"""

from nslab.nf import Counter, FromDevice, ToDevice
from nslab.nf.program import nf_main


def options(ap):
    ap.add_argument("--block", type=int, required=True, help="UDP destination port to drop")


def build(r, args):
    for a, b in ((args.left, args.right), (args.right, args.left)):
        # TODO: classify with IPClassifier(f"udp dst port {args.block}", "-"):
        # output 0 goes to a Discard("blocked"), output 1 on to the other side.
        r.add(FromDevice(a), f"in_{a}") >> r.add(Counter("forwarded"), f"count_{a}") >> r.add(
            ToDevice(b), f"out_{b}"
        )


if __name__ == "__main__":
    raise SystemExit(
        nf_main(
            "nf_afxdp",
            [("left", "first interface"), ("right", "second interface")],
            build,
            options,
            doc=__doc__,
        )
    )
