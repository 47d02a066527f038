"""ids: a transparent intrusion detection system (no IP address of its own).

    python labs/01-nfv/solution/ids.py IN OUT INSP   (in: from sw2; out: to lb1; insp: the inspector)

From IN to OUT it passes ARP, ICMP and TCP signalling (segments without
payload). HTTP requests (TCP port 80 with payload) are reassembled per flow
and request: only POST and PUT are admitted; a PUT whose body contains one
of the injection patterns (any case, any position, split across segments or
not) is diverted to INSP instead of OUT. Everything else is dropped.
From OUT to IN it passes ARP, ICMP and TCP (the service's answers).
"""

from __future__ import annotations

import sys

from nslab.nf import Counter, Discard, FromDevice, HTTPInspector, IPClassifier, ToDevice
from nslab.nf.program import nf_main

PATTERNS = ["cat /etc/passwd", "cat /var/log/", "INSERT", "UPDATE", "DELETE"]


def options(ap) -> None:
    ap.add_argument("--http-port", type=int, default=80)
    ap.add_argument("--hold", default="2", help="seconds a PUT may stay incomplete before deciding")


def build(r, a) -> None:
    to_out, to_in, to_insp = (
        r.add(ToDevice(d), f"to_{n}") for d, n in ((a.out, "out"), (a.inp, "in"), (a.insp, "insp"))
    )
    http = r.add(HTTPInspector(*PATTERNS, methods="POST PUT", inspect="PUT", hold=a.hold), "http")
    c = r.add(
        IPClassifier(
            "arp",
            "icmp",
            "tcp and not payload",
            f"tcp dst port {a.http_port}",
            "-",
        ),
        "in_classifier",
    )
    r.add(FromDevice(a.inp), "from_in") >> c
    c[0] >> r.add(Counter("in.arp"), "cnt_arp") >> to_out
    c[1] >> r.add(Counter("in.icmp"), "cnt_icmp") >> to_out
    c[2] >> r.add(Counter("in.tcp_signal"), "cnt_sig") >> http  # the inspector tracks handshakes
    c[3] >> r.add(Counter("in.http_data"), "cnt_http") >> http
    c[4] >> r.add(Discard("in.other"), "drop_in")
    http >> to_out
    http[1] >> r.add(Counter("in.http_to_insp"), "cnt_insp") >> to_insp

    o = r.add(IPClassifier("arp", "icmp", "tcp", "-"), "out_classifier")
    r.add(FromDevice(a.out), "from_out") >> o
    for port, cls in ((0, "out.arp"), (1, "out.icmp"), (2, "out.tcp")):
        o[port] >> r.add(Counter(cls), f"cnt_{cls}") >> to_in
    o[3] >> r.add(Discard("out.other"), "drop_out")
    r.add(FromDevice(a.insp), "from_insp") >> r.add(Discard("insp.ignored"), "drop_insp")


if __name__ == "__main__":
    sys.exit(
        nf_main(
            "ids",
            [
                ("inp", "interface towards sw2 (clients); written IN"),
                ("out", "interface towards lb1"),
                ("insp", "interface towards the inspector insp"),
            ],
            build,
            options,
            doc=__doc__,
        )
    )
