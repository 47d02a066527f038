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

import itertools
import sys
import time
from typing import Any

from nslab.errors import NslabError
from nslab.nf import (
    ARPQuerier,
    ARPResponder,
    Counter,
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
    PROTO_TCP,
    PROTO_UDP,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
    b2ip,
    ip2b,
    set_ip,
)
from nslab.nf.program import nf_main


# -- the load balancer's round robin per connection (this lab's graded logic) --
def _flow_timeout(pkt: Packet, tcp_timeout: float, done_timeout: float, other: float) -> float:
    if pkt.proto == PROTO_TCP:
        return done_timeout if pkt.tcp_flags() & (TCP_FIN | TCP_RST) else tcp_timeout
    return other


class IPRewriter(Element):
    """Destination rewriting with round-robin mapping per connection (a load
    balancer): `IPRewriter(100.0.0.40, 100.0.0.41, 100.0.0.42, vip=100.0.0.45)`.
    Input 0: client packets to the VIP; a new flow (TCP SYN, or any UDP packet)
    gets the next backend; its destination is rewritten -> output 0.
    Input 1: backend replies; the source is rewritten back to the VIP -> output 1.
    Packets of unknown flows are dropped. Timeouts as in NAPT."""

    NIN = 2

    def __init__(
        self,
        *backends: str,
        vip: str = "",
        tcp_timeout: str = "300",
        done_timeout: str = "10",
        udp_timeout: str = "60",
    ):
        super().__init__()
        if not backends or not vip:
            raise NslabError(
                "IPRewriter needs backends and vip=, e.g. IPRewriter(10.0.0.2, 10.0.0.3, vip=10.0.0.9)"
            )
        self._ports(2)
        self.backends = [ip2b(b) for b in backends]
        self.vip = ip2b(vip)
        self._rr = itertools.cycle(range(len(self.backends)))
        self.tcp_timeout = float(tcp_timeout)
        self.done_timeout = float(done_timeout)
        self.udp_timeout = float(udp_timeout)
        self.fwd = FlowTable()  # (proto, client, cport, vport) -> backend index
        self.rev = FlowTable()  # (proto, backend, bport, client, cport) -> True
        self.assigned = [0] * len(self.backends)

    def push(self, pkt: Packet, port: int = 0) -> None:
        pkt.parse()
        if pkt.proto not in (PROTO_TCP, PROTO_UDP) or pkt.pay <= pkt.l4:
            self.dropped += 1
            return
        now = time.monotonic()
        timeout = _flow_timeout(pkt, self.tcp_timeout, self.done_timeout, self.udp_timeout)
        if port == 0:
            if pkt.dst_ip() != self.vip:
                self.dropped += 1
                return
            key = (pkt.proto, pkt.src_ip(), pkt.sport(), pkt.dport())
            idx = self.fwd.get(key, now)
            flags = pkt.tcp_flags()
            if idx is None or (flags & TCP_SYN and not flags & 0x10 and self._restart(key, idx)):
                if pkt.proto == PROTO_TCP and not (flags & TCP_SYN):
                    self.dropped += 1  # mid-connection packet of a flow we do not know
                    return
                idx = next(self._rr)
                self.assigned[idx] += 1
            self.fwd.put(key, idx, now, timeout)
            backend = self.backends[idx]
            self.rev.put((pkt.proto, backend, key[3], key[1], key[2]), key, now, timeout)
            set_ip(pkt, "dst", backend)
            self.out[0](pkt)
        else:
            key = (pkt.proto, pkt.src_ip(), pkt.sport(), pkt.dst_ip(), pkt.dport())
            if self.rev.get(key, now) is None:
                self.dropped += 1
                return
            self.rev.touch(key, now, timeout)
            set_ip(pkt, "src", self.vip)
            self.out[1](pkt)

    def _restart(self, key: tuple, idx: int) -> bool:
        # A SYN on a flow that already finished (port reuse) starts a new connection;
        # a retransmitted SYN of a live handshake keeps its backend.
        return self.fwd.expires_soon(key, self.done_timeout)

    def tick(self, now: float) -> None:
        self.fwd.expire(now)
        self.rev.expire(now)

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["classes"] = {
            f"{self.name}.backend.{b2ip(b)}": {"connections": n}
            for b, n in zip(self.backends, self.assigned, strict=False)
        }
        return s


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
