"""napt (starter): forwards every frame between INSIDE and OUTSIDE unchanged.

    python labs/01-nfv/starter/napt.py INSIDE OUTSIDE     (e.g. eth0 eth1)

Your job: turn it into a source NAPT for the user zone (see the lab README):
10.0.0.0/24 -> 100.0.0.1 for TCP and ICMP echo, translated back on return.
"""

from __future__ import annotations

import sys

from nslab.nf import Counter, FromDevice, ToDevice
from nslab.nf.program import nf_main


def options(ap) -> None:
    ap.add_argument("--inside-ip", default="10.0.0.1")
    ap.add_argument("--outside-ip", default="100.0.0.1")


def build(r, a) -> None:
    to_in, to_out = r.add(ToDevice(a.inside), "to_inside"), r.add(ToDevice(a.outside), "to_outside")

    # TODO 1: answer ARP requests for a.inside_ip on the inside and a.outside_ip on the
    #         outside (ARPResponder), and learn who is where (ARPQuerier, input 1).
    # TODO 2: classify what arrives (IPClassifier): ARP, pings to napt itself, TCP and
    #         ICMP echo from 10.0.0.0/24 leaving the zone, everything else (Discard).
    # TODO 3: write the NAPT itself: an nslab.nf.Element subclass whose input 0 takes
    #         leaving traffic (new source a.outside_ip and a fresh port, kept in a
    #         FlowTable from nslab.nf.flows) and whose input 1 takes traffic to 100.0.0.1
    #         from the outside (translated back); set_ip/set_port (nslab.nf.packet) fix
    #         the checksums. Fix the Ethernet addresses with an ARPQuerier per side.
    # TODO 4: count every class (Counter("name")) so napt.report tells what happened.
    r.add(FromDevice(a.inside), "from_inside") >> r.add(Counter("inside.all"), "cnt_in") >> to_out
    r.add(FromDevice(a.outside), "from_outside") >> r.add(Counter("outside.all"), "cnt_out") >> to_in


if __name__ == "__main__":
    sys.exit(nf_main("napt", [("inside", "interface towards sw1 (10.0.0.0/24)"),
                              ("outside", "interface towards sw2 (100.0.0.0/24)")],
                     build, options, doc=__doc__))
