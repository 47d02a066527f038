"""lb1 (starter): forwards every frame between FRONT and BACK unchanged.

    python labs/01-nfv/starter/lb1.py FRONT BACK     (front: towards ids; back: towards sw3)

Your job: make lb1 own the virtual service 100.0.0.45:80 (see the lab README).
"""

from __future__ import annotations

import sys

from nslab.nf import Counter, FromDevice, ToDevice
from nslab.nf.program import nf_main


def options(ap) -> None:
    ap.add_argument("--vip", default="100.0.0.45")
    ap.add_argument("--vip-mac", default="02:00:00:00:00:45")
    ap.add_argument("--backends", default="100.0.0.40,100.0.0.41,100.0.0.42")


def build(r, a) -> None:
    to_front, to_back = r.add(ToDevice(a.front), "to_front"), r.add(ToDevice(a.back), "to_back")

    # TODO 1: answer ARP for the VIP with a.vip_mac (ARPResponder) and pings to the VIP
    #         (ICMPPingResponder) on the front side.
    # TODO 2: TCP to VIP:80 -> your own element (an nslab.nf.Element subclass with two
    #         inputs): a new connection gets the next backend (round robin), remembered in
    #         a FlowTable (nslab.nf.flows); set_ip(pkt, "dst", ...) rewrites the destination
    #         and fixes the checksums; backend replies get the VIP back as their source.
    # TODO 3: backends must reach the clients through you: answer their ARP on the back
    #         side (proxy ARP, but not for the backends themselves), and resolve the
    #         backends' MACs (ARPQuerier).
    # TODO 4: block everything else (Discard) and count every class (Counter).
    r.add(FromDevice(a.front), "from_front") >> r.add(Counter("front.all"), "cnt_front") >> to_back
    r.add(FromDevice(a.back), "from_back") >> r.add(Counter("back.all"), "cnt_back") >> to_front


if __name__ == "__main__":
    sys.exit(nf_main("lb1", [("front", "interface towards ids (clients)"),
                             ("back", "interface towards sw3 (llm1-3)")],
                     build, options, doc=__doc__))
