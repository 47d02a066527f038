"""Packets as raw bytes: header offsets parsed from the headers themselves
(Ethernet/VLAN, IPv4 IHL, TCP data offset, IP total length) and checksum helpers.

Never assume fixed offsets: a TCP header is 20-60 bytes depending on options,
an IPv4 header 20-60 bytes, and short frames carry Ethernet padding after the
IP packet.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_ARP = 0x0806
ETH_IP = 0x0800
ETH_VLAN = 0x8100
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class Packet:
    """A frame (bytearray) plus annotations. Offsets are parsed once, lazily;
    an element that changes header lengths must call `invalidate()`."""

    __slots__ = ("data", "dev", "paint", "_parsed", "ethertype", "l3", "proto", "l4", "pay", "end")

    def __init__(self, data: bytes | bytearray, dev: str | None = None):
        self.data = data if isinstance(data, bytearray) else bytearray(data)
        self.dev = dev  # interface the frame arrived on
        self.paint = 0  # free annotation for configurations (Click's Paint)
        self._parsed = False

    def invalidate(self) -> None:
        self._parsed = False

    def parse(self) -> Packet:
        if self._parsed:
            return self
        d = self.data
        n = len(d)
        self.ethertype = et = (d[12] << 8 | d[13]) if n >= 14 else -1
        self.l3 = l3 = 14
        if et == ETH_VLAN and n >= 18:
            self.ethertype = et = d[16] << 8 | d[17]
            self.l3 = l3 = 18
        self.proto = -1
        self.l4 = self.pay = self.end = -1
        if et == ETH_IP and n >= l3 + 20 and d[l3] >> 4 == 4:
            ihl = (d[l3] & 0x0F) * 4
            total = d[l3 + 2] << 8 | d[l3 + 3]
            end = min(l3 + total, n)  # drop Ethernet padding
            if ihl >= 20 and l3 + ihl <= end:
                self.proto = p = d[l3 + 9]
                self.l4 = l4 = l3 + ihl
                self.end = end
                frag_off = (d[l3 + 6] << 8 | d[l3 + 7]) & 0x1FFF
                if frag_off:  # a later fragment has no L4 header
                    self.pay = l4
                elif p == PROTO_TCP and end >= l4 + 20:
                    self.pay = min(l4 + (d[l4 + 12] >> 4) * 4, end)
                elif p == PROTO_UDP and end >= l4 + 8:
                    self.pay = l4 + 8
                elif p == PROTO_ICMP and end >= l4 + 8:
                    self.pay = l4 + 8
                else:
                    self.pay = end
        self._parsed = True
        return self

    # convenience accessors (parse first) -----------------------------------
    def is_ip(self) -> bool:
        return self.parse().l4 >= 0

    def src_ip(self) -> bytes:
        return bytes(self.data[self.l3 + 12 : self.l3 + 16])

    def dst_ip(self) -> bytes:
        return bytes(self.data[self.l3 + 16 : self.l3 + 20])

    def sport(self) -> int:
        return self.data[self.l4] << 8 | self.data[self.l4 + 1]

    def dport(self) -> int:
        return self.data[self.l4 + 2] << 8 | self.data[self.l4 + 3]

    def tcp_flags(self) -> int:
        return self.data[self.l4 + 13] if self.proto == PROTO_TCP else 0

    def payload(self) -> bytes:
        self.parse()
        if self.pay < 0:
            return b""
        return bytes(self.data[self.pay : self.end])

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Packet({len(self.data)} bytes from {self.dev})"


# -- addresses ---------------------------------------------------------------
def ip2b(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def b2ip(b: bytes) -> str:
    return str(ipaddress.IPv4Address(bytes(b)))


def mac2b(mac: str) -> bytes:
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r} (expected aa:bb:cc:dd:ee:ff)")
    return bytes(int(p, 16) for p in parts)


def b2mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


# -- checksums ---------------------------------------------------------------
def inet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum of data (the value to store in the header)."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_adjust(csum: int, old: bytes, new: bytes) -> int:
    """Incrementally update a stored checksum when 16-bit-aligned bytes `old`
    become `new` (RFC 1624: HC' = ~(~HC + ~m + m'))."""
    s = ~csum & 0xFFFF
    for i in range(0, len(old), 2):
        m = old[i] << 8 | old[i + 1]
        m2 = new[i] << 8 | new[i + 1]
        s += (~m & 0xFFFF) + m2
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _get16(d: bytearray, off: int) -> int:
    return d[off] << 8 | d[off + 1]


def _put16(d: bytearray, off: int, v: int) -> None:
    d[off] = v >> 8
    d[off + 1] = v & 0xFF


def l4_csum_offset(pkt: Packet) -> int:
    """Offset of the L4 checksum field, or -1 (ICMP has no pseudo-header)."""
    if pkt.proto == PROTO_TCP:
        return pkt.l4 + 16
    if pkt.proto == PROTO_UDP:
        return pkt.l4 + 6
    return -1


def set_ip(pkt: Packet, which: str, new_ip: bytes) -> None:
    """Rewrite the source ('src') or destination ('dst') IPv4 address and fix
    the IP checksum and the TCP/UDP checksum (pseudo-header) incrementally."""
    pkt.parse()
    d, l3 = pkt.data, pkt.l3
    off = l3 + (12 if which == "src" else 16)
    old = bytes(d[off : off + 4])
    if old == new_ip:
        return
    d[off : off + 4] = new_ip
    _put16(d, l3 + 10, csum_adjust(_get16(d, l3 + 10), old, new_ip))
    co = l4_csum_offset(pkt)
    if co >= 0 and co + 2 <= pkt.end:
        c = _get16(d, co)
        if pkt.proto == PROTO_UDP and c == 0:
            return  # UDP without checksum stays without
        c = csum_adjust(c, old, new_ip)
        if pkt.proto == PROTO_UDP and c == 0:
            c = 0xFFFF
        _put16(d, co, c)


def set_port(pkt: Packet, which: str, port: int) -> None:
    """Rewrite the TCP/UDP source or destination port, or the ICMP echo
    identifier (which='id'), fixing the L4 checksum incrementally."""
    pkt.parse()
    d, l4 = pkt.data, pkt.l4
    if pkt.proto == PROTO_ICMP:
        off, co = l4 + 4, l4 + 2
    else:
        off = l4 if which == "src" else l4 + 2
        co = l4_csum_offset(pkt)
    old = bytes(d[off : off + 2])
    new = port.to_bytes(2, "big")
    if old == new:
        return
    d[off : off + 2] = new
    c = _get16(d, co)
    if pkt.proto == PROTO_UDP and c == 0:
        return
    _put16(d, co, csum_adjust(c, old, new))


def dec_ttl(pkt: Packet) -> bool:
    """Decrement the IPv4 TTL (fixing the checksum); False when it expired."""
    pkt.parse()
    d, l3 = pkt.data, pkt.l3
    ttl = d[l3 + 8]
    if ttl <= 1:
        return False
    old = bytes(d[l3 + 8 : l3 + 10])
    d[l3 + 8] = ttl - 1
    _put16(d, l3 + 10, csum_adjust(_get16(d, l3 + 10), old, bytes(d[l3 + 8 : l3 + 10])))
    return True


def verify_checksums(data: bytes | bytearray) -> bool:
    """True when the IPv4 header checksum and the TCP/UDP/ICMP checksum are
    correct (used by tests and for debugging)."""
    p = Packet(bytearray(data)).parse()
    if p.l4 < 0:
        return True
    d = p.data
    if inet_checksum(d[p.l3 : p.l4]) != 0:
        return False
    seg = bytes(d[p.l4 : p.end])
    if p.proto == PROTO_ICMP:
        return inet_checksum(seg) == 0
    if p.proto in (PROTO_TCP, PROTO_UDP):
        if p.proto == PROTO_UDP and _get16(d, p.l4 + 6) == 0:
            return True
        pseudo = bytes(d[p.l3 + 12 : p.l3 + 20]) + struct.pack("!BBH", 0, p.proto, len(seg))
        return inet_checksum(pseudo + seg) == 0
    return True


# -- builders used by responders --------------------------------------------
def arp_frame(op: int, src_mac: bytes, src_ip: bytes, dst_mac: bytes, dst_ip: bytes) -> bytearray:
    """An Ethernet ARP frame (op 1 = request, 2 = reply), padded to 60 bytes."""
    eth_dst = b"\xff" * 6 if op == 1 else dst_mac
    tha = b"\x00" * 6 if op == 1 else dst_mac
    f = eth_dst + src_mac + b"\x08\x06"
    f += struct.pack("!HHBBH", 1, ETH_IP, 6, 4, op) + src_mac + src_ip + tha + dst_ip
    return bytearray(f.ljust(60, b"\x00"))


def icmp_echo_reply(pkt: Packet, my_mac: bytes) -> bytearray:
    """Turn an ICMP echo request into the reply, in place: swap addresses and
    MACs, set type 0, fix the checksums. Returns the frame."""
    pkt.parse()
    d, l3, l4 = pkt.data, pkt.l3, pkt.l4
    d[0:6], d[6:12] = d[6:12], my_mac
    src, dst = bytes(d[l3 + 12 : l3 + 16]), bytes(d[l3 + 16 : l3 + 20])
    d[l3 + 12 : l3 + 16], d[l3 + 16 : l3 + 20] = dst, src  # checksum unchanged by a swap
    old = bytes(d[l4 : l4 + 2])
    d[l4] = 0
    _put16(d, l4 + 2, csum_adjust(_get16(d, l4 + 2), old, bytes(d[l4 : l4 + 2])))
    old = bytes(d[l3 + 8 : l3 + 10])
    d[l3 + 8] = 64
    _put16(d, l3 + 10, csum_adjust(_get16(d, l3 + 10), old, bytes(d[l3 + 8 : l3 + 10])))
    return d
