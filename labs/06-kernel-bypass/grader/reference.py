"""Lab 6's reference models and test packets (grader only: never shipped).

Everything is computed from the bytes, independently of the student's C:
`filter_expect` says what xdp_filter must answer for a frame under a rule
set; `lb_check` says whether xdp_lb's output for a frame is a correct
rewrite. Packets are built with scapy and then cut, so the grader's frames
cover VLAN tags (one and two), IPv4 options, fragments, TCP options, and
short and truncated frames.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
STAT_PASS, STAT_DROP, STAT_MALFORMED = 0, 1, 2
TCP_P, UDP_P, ICMP_P = 6, 17, 1


# -- the filter ----------------------------------------------------------------
def rule_key(proto: int, port: int) -> bytes:
    return struct.pack("!BBH", proto, 0, port)


def rule_val(action: int, hits: int = 0) -> bytes:
    return struct.pack("=IIQ", action, 0, hits)


def filter_expect(frame: bytes, rules: dict[tuple[int, int], int]) -> tuple[int, int, tuple | None]:
    """(verdict, stats slot, matched rule) for `frame` under `rules`
    {(proto, port): action}."""
    if len(frame) < 14:
        return XDP_DROP, STAT_MALFORMED, None
    etype, off = struct.unpack_from("!H", frame, 12)[0], 14
    for _ in range(2):
        if etype not in (0x8100, 0x88A8):
            break
        if len(frame) < off + 4:
            return XDP_DROP, STAT_MALFORMED, None
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if etype != 0x0800:
        return XDP_PASS, STAT_PASS, None
    if len(frame) < off + 20:
        return XDP_DROP, STAT_MALFORMED, None
    vihl = frame[off]
    ihl = vihl & 15
    if vihl >> 4 != 4 or ihl < 5 or len(frame) < off + ihl * 4:
        return XDP_DROP, STAT_MALFORMED, None
    proto = frame[off + 9]
    frag = struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF
    l4 = off + ihl * 4
    port = 0
    if frag == 0 and proto in (TCP_P, UDP_P):
        if len(frame) < l4 + 4:
            return XDP_DROP, STAT_MALFORMED, None
        port = struct.unpack_from("!H", frame, l4 + 2)[0]
    for key in ((proto, port), (proto, 0)) if port else ((proto, 0),):
        if key in rules:
            act = rules[key]
            return act, STAT_DROP if act == XDP_DROP else STAT_PASS, key
    return XDP_PASS, STAT_PASS, None


def make_rules(rng: random.Random) -> dict[tuple[int, int], int]:
    """A rule set drawn from the grading's secret seed: ports cannot be guessed."""
    ports = rng.sample(range(1024, 60000), 8)
    rules = {
        (TCP_P, ports[0]): XDP_DROP,
        (TCP_P, ports[1]): XDP_DROP,
        (UDP_P, ports[2]): XDP_DROP,
        (UDP_P, ports[3]): XDP_PASS,  # an explicit allow
        (TCP_P, ports[4]): XDP_PASS,
        (ICMP_P, 0): XDP_DROP,
        (UDP_P, 0): XDP_DROP,  # the wildcard: UDP is closed unless a rule opens a port
    }
    # the structure is fixed (so every kind of frame meets a drop somewhere and
    # a program that passes everything scores the same in every grading); the
    # ports are secret
    return rules


@dataclass
class Case:
    kind: str  # what the frame exercises (feedback: "vlan", "ip options", ...)
    frame: bytes
    why: str


def _eth(rng: random.Random) -> Ether:
    return Ether(src=f"02:00:00:{rng.randrange(256):02x}:00:01", dst="02:00:00:00:00:02")


def filter_cases(rng: random.Random, rules: dict, n: int) -> list[Case]:
    """n frames per kind, ports mostly taken from the rules (so verdicts vary)."""
    ports = [p for (_, p) in rules if p] + [rng.randrange(1, 65535) for _ in range(4)]
    out: list[Case] = []

    def ip(**kw) -> IP:
        return IP(src=f"10.9.{rng.randrange(256)}.{rng.randrange(1, 255)}", dst="10.9.0.2", **kw)

    def l4(proto: int, dport: int):
        sport = rng.randrange(1024, 65535)
        if proto == TCP_P:
            opts = rng.choice(
                [
                    [],
                    [("MSS", 1460)],
                    [("MSS", 1460), ("SAckOK", b""), ("WScale", 7), ("Timestamp", (1, 0))],
                ]
            )
            return TCP(sport=sport, dport=dport, flags="S", options=opts)
        return UDP(sport=sport, dport=dport)

    for _ in range(n):
        proto, port = rng.choice([TCP_P, UDP_P]), rng.choice(ports)
        pay = Raw(bytes(rng.randrange(0, 40)))
        out.append(
            Case("tcp/udp", bytes(_eth(rng) / ip() / l4(proto, port) / pay), f"{proto}/{port}")
        )
        out.append(
            Case(
                "vlan",
                bytes(
                    _eth(rng) / Dot1Q(vlan=rng.randrange(1, 4094)) / ip() / l4(proto, port) / pay
                ),
                f"802.1Q, {proto}/{port}",
            )
        )
        out.append(
            Case(
                "vlan",
                bytes(
                    _eth(rng)
                    / Dot1AD(vlan=rng.randrange(1, 4094))
                    / Dot1Q(vlan=7)
                    / ip()
                    / l4(proto, port)
                ),
                f"QinQ, {proto}/{port}",
            )
        )
        opts = [IPOption_RR(routers=["0.0.0.0"] * rng.randrange(1, 8))]
        out.append(
            Case(
                "ip options",
                bytes(_eth(rng) / ip(options=opts) / l4(proto, port) / pay),
                f"IPv4 options, {proto}/{port}",
            )
        )
        whole = _eth(rng) / ip(flags="MF", frag=0) / l4(proto, port) / Raw(bytes(24))
        out.append(Case("fragments", bytes(whole), f"first fragment, {proto}/{port}"))
        later = (
            _eth(rng)
            / ip(frag=rng.randrange(1, 100), proto=proto)
            / Raw(struct.pack("!HH", 1, port) + bytes(20))
        )
        out.append(
            Case(
                "fragments",
                bytes(later),
                f"later fragment of {proto} (bytes look like port {port})",
            )
        )
        out.append(Case("icmp/arp", bytes(_eth(rng) / ip() / ICMP()), "ICMP echo"))
        out.append(Case("icmp/arp", bytes(_eth(rng) / ARP(pdst="10.9.0.2")), "ARP"))
        full = bytes(_eth(rng) / ip(options=opts) / l4(proto, port))
        eth_ip = 14 + 20 + 4 * len(opts[0].routers) + 4
        cut = rng.choice([14 + 10, 14 + 19, eth_ip - 2, eth_ip + 2, eth_ip + 3])
        out.append(
            Case("truncated", full[:cut], f"{cut}-byte frame cut from an IPv4 {proto} packet")
        )
        bad = bytearray(bytes(_eth(rng) / ip() / l4(proto, port)))
        bad[14] = 0x43  # IHL 3: not a valid IPv4 header
        out.append(Case("truncated", bytes(bad), "IPv4 header length 12 bytes (IHL 3)"))
        out.append(Case("truncated", bytes(_eth(rng) / Dot1Q(vlan=3))[:16], "802.1Q tag cut short"))
    return out


# -- the load balancer -----------------------------------------------------------
def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def checksums_ok(frame: bytes) -> str:
    """'' when the IPv4 and TCP checksums of an untagged frame are right, else why not."""
    ihl = (frame[14] & 15) * 4
    iph = frame[14 : 14 + ihl]
    if csum(iph) != 0:
        return "the IPv4 header checksum is wrong"
    total = struct.unpack_from("!H", iph, 2)[0]
    seg = frame[14 + ihl : 14 + total]
    pseudo = iph[12:20] + struct.pack("!BBH", 0, iph[9], len(seg))
    if csum(pseudo + seg) != 0:
        return "the TCP checksum is wrong"
    return ""


@dataclass
class LbSetup:
    vip: str
    port: int
    client_mac: str
    client_if_mac: str
    backend_if_mac: str
    client_ifindex: int
    backend_ifindex: int
    backends: list[tuple[str, str]]  # (ip, mac)

    def config(self) -> bytes:
        return (
            _ip(self.vip)
            + struct.pack("!H", self.port)
            + struct.pack("=HII", len(self.backends), self.client_ifindex, self.backend_ifindex)
            + _mac(self.client_mac)
            + _mac(self.client_if_mac)
            + _mac(self.backend_if_mac)
            + b"\0\0"
        )


def backend_val(ip: str, mac: str) -> bytes:
    return _ip(ip) + _mac(mac) + b"\0\0"


def _ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def lb_syn(rng: random.Random, setup: LbSetup, client: str, sport: int, style: str) -> bytes:
    opts: list = [("MSS", 1460)]
    if style == "varied":
        opts = rng.choice(
            [
                [],
                [
                    ("MSS", 1460),
                    ("SAckOK", b""),
                    ("WScale", 7),
                    ("Timestamp", (rng.randrange(1 << 31), 0)),
                    ("NOP", None),
                ],
            ]
        )
    ipopts = (
        [IPOption_RR(routers=["0.0.0.0"] * 2)] if style == "varied" and rng.random() < 0.5 else []
    )
    pkt = (
        Ether(src=setup.client_mac, dst=setup.client_if_mac)
        / IP(src=client, dst=setup.vip, options=ipopts, id=rng.randrange(65536))
        / TCP(sport=sport, dport=setup.port, flags="S", seq=rng.randrange(1 << 32), options=opts)
        / Raw(bytes(rng.randrange(0, 30)))
    )
    return bytes(pkt)


def lb_reply(setup: LbSetup, backend_ip: str, backend_mac: str, client: str, cport: int) -> bytes:
    pkt = (
        Ether(src=backend_mac, dst=setup.backend_if_mac)
        / IP(src=backend_ip, dst=client)
        / TCP(sport=setup.port, dport=cport, flags="SA", seq=77, ack=1)
        / Raw(b"hello from the backend")
    )
    return bytes(pkt)


def lb_check_forward(inp: bytes, out: bytes, setup: LbSetup) -> tuple[str, str | None]:
    """('' or what is wrong, the backend ip chosen) for a forward rewrite."""
    if len(out) != len(inp):
        return f"the frame changed length ({len(inp)} -> {len(out)} bytes)", None
    dst = ".".join(str(b) for b in out[30:34])
    macs = {ip: mac for ip, mac in setup.backends}
    if dst not in macs:
        return f"destination {dst} is not a backend", None
    if out[0:6] != _mac(macs[dst]):
        return f"destination MAC {out[0:6].hex(':')} is not backend {dst}'s", dst
    if out[6:12] != _mac(setup.backend_if_mac):
        return "source MAC is not the balancer's backend-side MAC", dst
    why = checksums_ok(out)
    if why:
        return why, dst
    # nothing else may change: TTL, id, options, ports, sequence numbers, payload
    ref = bytearray(inp)
    ref[0:12] = out[0:12]
    ref[24:26] = out[24:26]  # IPv4 checksum
    ref[30:34] = out[30:34]
    ihl = (inp[14] & 15) * 4
    ref[14 + ihl + 16 : 14 + ihl + 18] = out[14 + ihl + 16 : 14 + ihl + 18]  # TCP checksum
    if bytes(ref) != out:
        diff = next(i for i in range(len(out)) if ref[i] != out[i])
        return f"byte {diff} changed, which the rewrite must leave alone", dst
    return "", dst


def lb_check_reply(inp: bytes, out: bytes, setup: LbSetup) -> str:
    if len(out) != len(inp):
        return "the reply changed length"
    if out[26:30] != _ip(setup.vip):
        return f"the reply's source is {'.'.join(str(b) for b in out[26:30])}, not the VIP"
    if out[0:6] != _mac(setup.client_mac) or out[6:12] != _mac(setup.client_if_mac):
        return "the reply's MACs are not (client, balancer's client side)"
    why = checksums_ok(out)
    if why:
        return why
    ref = bytearray(inp)
    ref[0:12], ref[24:26], ref[26:30] = out[0:12], out[24:26], out[26:30]
    ihl = (inp[14] & 15) * 4
    ref[14 + ihl + 16 : 14 + ihl + 18] = out[14 + ihl + 16 : 14 + ihl + 18]
    return "" if bytes(ref) == out else "the reply changed bytes it must leave alone"
