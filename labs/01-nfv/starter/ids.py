"""ids (starter): a transparent bridge that passes every frame between IN and OUT.

    python labs/01-nfv/starter/ids.py IN OUT INSP   (in: from sw2; out: to lb1; insp: the inspector)

Your job: make it an IDS (see the lab README).
"""

from __future__ import annotations

import sys

from nslab.nf import Counter, Discard, FromDevice, ToDevice
from nslab.nf.program import nf_main

PATTERNS = ["cat /etc/passwd", "cat /var/log/", "INSERT", "UPDATE", "DELETE"]


def options(ap) -> None:
    ap.add_argument("--http-port", type=int, default=80)


def build(r, a) -> None:
    to_out, to_in = r.add(ToDevice(a.out), "to_out"), r.add(ToDevice(a.inp), "to_in")
    to_insp = r.add(ToDevice(a.insp), "to_insp")  # noqa: F841 - TODO 3 uses it

    # TODO 1: classify what comes IN (IPClassifier): ARP, ICMP, TCP without payload pass;
    #         HTTP (TCP port a.http_port with payload) is inspected; the rest is dropped.
    # TODO 2: only POST and PUT may pass. Beware: header lengths vary (IHL, TCP options),
    #         and a request may be split over several segments.
    # TODO 3: PUT bodies containing one of PATTERNS (any case, anywhere) go to to_insp
    #         instead of to_out. Search looks at one packet only: for 2 and 3 write an
    #         element that reassembles each flow's request (in sequence order) first.
    # TODO 4: count every class (Counter) so ids.report tells what happened.
    r.add(FromDevice(a.inp), "from_in") >> r.add(Counter("in.all"), "cnt_in") >> to_out
    r.add(FromDevice(a.out), "from_out") >> r.add(Counter("out.all"), "cnt_out") >> to_in
    r.add(FromDevice(a.insp), "from_insp") >> r.add(Discard("insp.ignored"), "drop_insp")


if __name__ == "__main__":
    sys.exit(nf_main("ids", [("inp", "interface towards sw2 (clients); written IN"),
                             ("out", "interface towards lb1"),
                             ("insp", "interface towards the inspector insp")],
                     build, options, doc=__doc__))
