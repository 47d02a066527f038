"""napt: source NAPT between the user zone (10.0.0.0/24) and the service
zone (100.0.0.0/24), for TCP, UDP and ICMP echo.

    python labs/01-nfv/solution/napt.py INSIDE OUTSIDE     (e.g. eth0 eth1)

Outbound packets from 10.0.0.0/24 leave with source 100.0.0.1 and a fresh
port (ICMP: a fresh echo identifier); replies are translated back. napt also
answers ARP and pings for its own addresses (10.0.0.1 inside, 100.0.0.1
outside). Its interfaces carry no kernel IP address: the NF owns them.
"""

from __future__ import annotations

import sys

from nslab.nf import (
    NAPT,
    ARPQuerier,
    ARPResponder,
    Counter,
    DecIPTTL,
    Discard,
    FromDevice,
    ICMPPingResponder,
    IPClassifier,
    Tee,
    ToDevice,
)
from nslab.nf.program import nf_main


def options(ap) -> None:
    ap.add_argument("--inside-ip", default="10.0.0.1")
    ap.add_argument("--inside-net", default="10.0.0.0/24")
    ap.add_argument("--outside-ip", default="100.0.0.1")
    ap.add_argument("--outside-net", default="100.0.0.0/24")


def build(r, a) -> None:
    ins, outs = a.inside, a.outside
    to_in, to_out = r.add(ToDevice(ins), "to_inside"), r.add(ToDevice(outs), "to_outside")
    napt = r.add(NAPT(a.outside_ip), "napt")
    # ARP tables per side; they learn from every ARP frame seen on their link
    arp_in = r.add(ARPQuerier(a.inside_ip, ins, net=a.inside_net), "arpq_inside")
    arp_out = r.add(ARPQuerier(a.outside_ip, outs, net=a.outside_net), "arpq_outside")
    arp_in >> to_in
    arp_out >> to_out

    # inside -> outside
    c = r.add(
        IPClassifier(
            "arp",
            f"icmp type echo and dst host {a.inside_ip}",
            f"src net {a.inside_net} and not dst net {a.inside_net} and icmp type echo",
            f"src net {a.inside_net} and not dst net {a.inside_net} and tcp",
            f"src net {a.inside_net} and not dst net {a.inside_net} and udp",
            "-",
        ),
        "inside_classifier",
    )
    r.add(FromDevice(ins), "from_inside") >> c
    t = c[0] >> r.add(Counter("inside.arp"), "cnt_in_arp") >> r.add(Tee(2), "tee_in_arp")
    t[1] >> arp_in[1]
    resp = t >> r.add(ARPResponder(f"{a.inside_ip} {ins}"), "arp_resp_inside")
    resp >> to_in
    resp[1] >> r.add(Discard("inside.arp_not_for_napt"), "drop_in_arp")
    (
        c[1]
        >> r.add(Counter("inside.ping_napt"), "cnt_in_ping")
        >> r.add(ICMPPingResponder(), "pong_in")
        >> to_in
    )
    ttl_out = r.add(DecIPTTL(), "ttl_out")
    for port, cls in ((2, "inside.icmp_echo"), (3, "inside.tcp"), (4, "inside.udp")):
        c[port] >> r.add(Counter(cls), f"cnt_{cls}") >> napt
    napt >> ttl_out >> arp_out
    ttl_out[1] >> r.add(Discard("ttl_expired"), "drop_ttl_out")
    c[5] >> r.add(Discard("inside.other"), "drop_in_other")

    # outside -> inside
    o = r.add(
        IPClassifier(
            "arp",
            f"dst host {a.outside_ip} and (tcp or udp or icmp)",
            "-",
        ),
        "outside_classifier",
    )
    r.add(FromDevice(outs), "from_outside") >> o
    t2 = o[0] >> r.add(Counter("outside.arp"), "cnt_out_arp") >> r.add(Tee(2), "tee_out_arp")
    t2[1] >> arp_out[1]
    resp2 = t2 >> r.add(ARPResponder(f"{a.outside_ip} {outs}"), "arp_resp_outside")
    resp2 >> to_out
    resp2[1] >> r.add(Discard("outside.arp_not_for_napt"), "drop_out_arp")
    o[1] >> r.add(Counter("outside.to_napt"), "cnt_out_ip") >> napt[1]
    ttl_in = r.add(DecIPTTL(), "ttl_in")
    napt[1] >> ttl_in >> arp_in
    ttl_in[1] >> r.add(Discard("ttl_expired"), "drop_ttl_in")
    # no mapping: answer pings to 100.0.0.1 itself, drop the rest
    pong = napt[2] >> r.add(ICMPPingResponder(), "pong_out")
    pong >> to_out
    pong[1] >> r.add(Discard("outside.no_mapping"), "drop_out_nomap")
    o[2] >> r.add(Discard("outside.other"), "drop_out_other")


if __name__ == "__main__":
    sys.exit(
        nf_main(
            "napt",
            [
                ("inside", "interface towards sw1 (10.0.0.0/24)"),
                ("outside", "interface towards sw2 (100.0.0.0/24)"),
            ],
            build,
            options,
            doc=__doc__,
        )
    )
