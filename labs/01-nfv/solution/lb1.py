"""lb1: the load balancer that owns the virtual service 100.0.0.45:80.

    python labs/01-nfv/solution/lb1.py FRONT BACK     (front: towards ids; back: towards sw3)

* answers ARP for the VIP with a made-up MAC and pings to the VIP;
* TCP to VIP:80: each new connection goes to the next of llm1-3 (round
  robin); the destination is rewritten to that backend;
* backend replies: the source is rewritten back to the VIP;
* on the back side it answers ARP for addresses that are not backends
  (proxy ARP), so backends reach clients through lb1;
* everything else is blocked (counted as drops).
"""

from __future__ import annotations

import sys

from nslab.nf import (
    ARPQuerier,
    ARPResponder,
    Counter,
    Discard,
    FromDevice,
    ICMPPingResponder,
    IPClassifier,
    IPRewriter,
    Tee,
    ToDevice,
)
from nslab.nf.program import nf_main


def options(ap) -> None:
    ap.add_argument("--vip", default="100.0.0.45")
    ap.add_argument(
        "--vip-mac", default="02:00:00:00:00:45", help="made-up MAC the VIP answers ARP with"
    )
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--backends", default="100.0.0.40,100.0.0.41,100.0.0.42")
    ap.add_argument("--net", default="100.0.0.0/24")


def build(r, a) -> None:
    backends = a.backends.split(",")
    front, back = a.front, a.back
    to_front, to_back = r.add(ToDevice(front), "to_front"), r.add(ToDevice(back), "to_back")
    rw = r.add(IPRewriter(*backends, vip=a.vip), "rr")
    arp_front = r.add(ARPQuerier(a.vip, a.vip_mac, net=a.net), "arpq_front")
    arp_back = r.add(ARPQuerier(a.vip, back, net=a.net), "arpq_back")
    arp_front >> to_front
    arp_back >> to_back

    f = r.add(
        IPClassifier(
            "arp",
            f"icmp type echo and dst host {a.vip}",
            f"tcp dst port {a.port} and dst host {a.vip}",
            "-",
        ),
        "front_classifier",
    )
    r.add(FromDevice(front), "from_front") >> f
    t = f[0] >> r.add(Counter("front.arp"), "cnt_front_arp") >> r.add(Tee(2), "tee_front_arp")
    t[1] >> arp_front[1]
    resp = t >> r.add(ARPResponder(f"{a.vip} {a.vip_mac}"), "arp_vip")
    resp >> to_front
    resp[1] >> r.add(Discard("front.arp_not_vip"), "drop_front_arp")
    (
        f[1]
        >> r.add(Counter("front.ping_vip"), "cnt_ping")
        >> r.add(ICMPPingResponder(a.vip_mac), "pong")
        >> to_front
    )
    f[2] >> r.add(Counter("front.http"), "cnt_http_in") >> rw
    rw >> arp_back
    f[3] >> r.add(Discard("front.blocked"), "drop_front")

    srcs = " or ".join(f"src host {b}" for b in backends)
    b = r.add(IPClassifier("arp", f"tcp src port {a.port} and ({srcs})", "-"), "back_classifier")
    r.add(FromDevice(back), "from_back") >> b
    t2 = b[0] >> r.add(Counter("back.arp"), "cnt_back_arp") >> r.add(Tee(2), "tee_back_arp")
    t2[1] >> arp_back[1]
    proxy = t2 >> r.add(
        ARPResponder(f"{a.net} {back}", **{"except": " ".join(backends)}), "proxy_arp"
    )
    proxy >> to_back
    proxy[1] >> r.add(Discard("back.arp_for_backend"), "drop_back_arp")
    b[1] >> r.add(Counter("back.http"), "cnt_http_out") >> rw[1]
    rw[1] >> arp_front
    b[2] >> r.add(Discard("back.blocked"), "drop_back")


if __name__ == "__main__":
    sys.exit(
        nf_main(
            "lb1",
            [
                ("front", "interface towards ids (clients)"),
                ("back", "interface towards sw3 (llm1-3)"),
            ],
            build,
            options,
            doc=__doc__,
        )
    )
