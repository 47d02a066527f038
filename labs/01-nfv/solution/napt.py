"""napt: source NAPT between the user zone (10.0.0.0/24) and the service
zone (100.0.0.0/24), for TCP, UDP and ICMP echo.

    python labs/01-nfv/solution/napt.py INSIDE OUTSIDE     (e.g. eth0 eth1)

Outbound packets from 10.0.0.0/24 leave with source 100.0.0.1 and a fresh
port (ICMP: a fresh echo identifier); replies are translated back. napt also
answers ARP and pings for its own addresses (10.0.0.1 inside, 100.0.0.1
outside). Its interfaces carry no kernel IP address: the NF owns them.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

from nslab.nf import (
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
from nslab.nf.element import Element
from nslab.nf.flows import FlowTable
from nslab.nf.packet import (
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_FIN,
    TCP_RST,
    Packet,
    ip2b,
    set_ip,
    set_port,
)
from nslab.nf.program import nf_main


# -- the NAPT's translation state (this lab's graded logic) --
def _flow_timeout(pkt: Packet, tcp_timeout: float, done_timeout: float, other: float) -> float:
    if pkt.proto == PROTO_TCP:
        return done_timeout if pkt.tcp_flags() & (TCP_FIN | TCP_RST) else tcp_timeout
    return other


class NAPT(Element):
    """Source NAPT with a flow table (Click's IPRewriter + ICMPPingRewriter for
    one public address). `NAPT(100.0.0.1, ports=1024-65535, tcp_timeout=300,
    done_timeout=10, udp_timeout=60, icmp_timeout=30)`.
    Input 0: outbound packets (TCP, UDP, ICMP echo) -> source rewritten -> output 0.
    Input 1: inbound packets to the public address -> destination restored ->
    output 1; without a mapping -> output 2 (e.g. pings to the NAT itself) or dropped."""

    NIN = 2

    def __init__(
        self,
        public_ip: str,
        ports: str = "1024-65535",
        tcp_timeout: str = "300",
        done_timeout: str = "10",
        udp_timeout: str = "60",
        icmp_timeout: str = "30",
    ):
        super().__init__()
        self._ports(3)
        self.public = ip2b(public_ip)
        lo, hi = (int(x) for x in ports.split("-"))
        self.port_range = (lo, hi)
        self._next_port = itertools.cycle(range(lo, hi + 1))
        self.tcp_timeout = float(tcp_timeout)
        self.done_timeout = float(done_timeout)
        self.udp_timeout = float(udp_timeout)
        self.icmp_timeout = float(icmp_timeout)
        self.out_map = FlowTable()  # (proto, src, sport, dst, dport) -> public port
        self.in_map = FlowTable()  # (proto, public port, remote, rport) -> (src, sport)
        self.translated = [0, 0]

    def _key_ports(self, pkt: Packet) -> tuple[int, int] | None:
        if pkt.proto in (PROTO_TCP, PROTO_UDP) and pkt.pay > pkt.l4:
            return pkt.sport(), pkt.dport()
        if pkt.proto == PROTO_ICMP and pkt.pay > pkt.l4:
            t = pkt.data[pkt.l4]
            if t in (0, 8):  # echo: the identifier plays the port's role on both sides
                ident = pkt.data[pkt.l4 + 4] << 8 | pkt.data[pkt.l4 + 5]
                return ident, ident
        return None

    def _timeout(self, pkt: Packet) -> float:
        t = self.icmp_timeout if pkt.proto == PROTO_ICMP else self.udp_timeout
        return _flow_timeout(pkt, self.tcp_timeout, self.done_timeout, t)

    def _alloc(self, proto: int, remote: bytes, rport: int) -> int | None:
        lo, hi = self.port_range
        for _ in range(hi - lo + 1):
            p = next(self._next_port)
            if self.in_map.get((proto, p, remote, rport)) is None:
                return p
        return None

    def push(self, pkt: Packet, port: int = 0) -> None:
        pkt.parse()
        ports = self._key_ports(pkt) if pkt.l4 >= 0 else None
        if ports is None:
            self.dropped += 1
            return
        now = time.monotonic()
        proto = pkt.proto
        icmp = proto == PROTO_ICMP
        if port == 0:
            src, dst = pkt.src_ip(), pkt.dst_ip()
            key = (proto, src, ports[0], dst, 0 if icmp else ports[1])
            pub = self.out_map.get(key, now)
            if pub is None:
                pub = self._alloc(proto, dst, 0 if icmp else ports[1])
                if pub is None:
                    self.dropped += 1
                    return
            timeout = self._timeout(pkt)
            self.out_map.put(key, pub, now, timeout)
            self.in_map.put((proto, pub, dst, key[4]), (src, ports[0]), now, timeout)
            set_ip(pkt, "src", self.public)
            set_port(pkt, "id" if icmp else "src", pub)
            self.translated[0] += 1
            self.out[0](pkt)
        else:
            if pkt.dst_ip() != self.public:
                self.dropped += 1
                return
            remote = pkt.src_ip()
            key = (proto, ports[1], remote, 0 if icmp else ports[0])
            orig = self.in_map.get(key, now)
            if orig is None:
                self.out[2](pkt)
                return
            self.in_map.touch(key, now, self._timeout(pkt))
            set_ip(pkt, "dst", orig[0])
            set_port(pkt, "id" if icmp else "dst", orig[1])
            self.translated[1] += 1
            self.out[1](pkt)

    def tick(self, now: float) -> None:
        self.out_map.expire(now)
        self.in_map.expire(now)

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["flows"] = {self.name: len(self.in_map)}
        return s


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
