"""The element library: devices, classifiers, counters, rewriters, responders.

Arguments are strings so that the same classes serve the configuration
language (`Counter(tcp)`) and Python (`Counter("tcp")`).
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from typing import Any

from nslab.errors import NslabError
from nslab.nf.element import CLOCK, Element
from nslab.nf.filter import compile_filter
from nslab.nf.packet import (
    PROTO_ICMP,
    Packet,
    arp_frame,
    b2ip,
    dec_ttl,
    icmp_echo_reply,
    ip2b,
    mac2b,
)
from nslab.nf.rawsock import mac_of


def _mac(value: str) -> bytes:
    """A MAC address, or the MAC of a named local interface."""
    try:
        return mac2b(value)
    except ValueError:
        return mac_of(value)


def _bool(v: Any) -> bool:
    return str(v).lower() in ("1", "true", "yes", "on")


# -- devices -----------------------------------------------------------------
class FromDevice(Element):
    """Frames received on an interface (promiscuous; outgoing frames ignored). Output 0."""

    NIN = 0

    def __init__(self, dev: str, promisc: str = "true", batch: str = "64"):
        super().__init__()
        self.dev = dev
        self.promisc = _bool(promisc)
        self.batch = int(batch)
        self.packets = self.bytes = 0
        self.sock: Any = None

    def open(self, sock: Any) -> None:
        self.sock = sock

    def receive(self) -> int:
        """Read one batch and push it; returns the number of frames."""
        frames = self.sock.recv_batch()
        out, dev = self.out[0], self.dev
        for f in frames:
            self.bytes += len(f)
            out(Packet(f, dev))
        self.packets += len(frames)
        return len(frames)

    def inject(self, frame: bytes, dev: str | None = None) -> None:
        """Push a frame as if received (tests, replay)."""
        self.packets += 1
        self.bytes += len(frame)
        self.out[0](Packet(bytearray(frame), dev or self.dev))

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["interfaces"] = {self.dev: {"in_packets": self.packets, "in_bytes": self.bytes}}
        return s


class ToDevice(Element):
    """Sends frames out of an interface (batched; the router flushes after each burst)."""

    NOUT = 0

    def __init__(self, dev: str):
        super().__init__()
        self.dev = dev
        self.queue: list[bytearray] = []
        self.packets = self.bytes = 0
        self.sock: Any = None
        self.sent_frames: list[bytes] | None = None  # set to [] to capture (tests)

    def open(self, sock: Any) -> None:
        self.sock = sock

    def push(self, pkt: Packet, port: int = 0) -> None:
        self.queue.append(pkt.data)

    def flush(self) -> None:
        q = self.queue
        if not q:
            return
        self.queue = []
        if self.sent_frames is not None:
            self.sent_frames.extend(bytes(f) for f in q)
        sent = self.sock.send_batch(q) if self.sock is not None else len(q)
        self.packets += sent
        self.bytes += sum(len(f) for f in q[:sent])
        self.dropped += len(q) - sent

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["interfaces"] = {self.dev: {"out_packets": self.packets, "out_bytes": self.bytes}}
        return s


# -- counting and dropping ---------------------------------------------------
class Counter(Element):
    """Counts packets and bytes that pass through; `Counter(NAME)` reports
    them as traffic class NAME."""

    def __init__(self, cls: str = ""):
        super().__init__()
        self.cls = cls
        self.packets = self.bytes = 0
        self.first = self.last = 0.0

    def push(self, pkt: Packet, port: int = 0) -> None:
        self.packets += 1
        self.bytes += len(pkt.data)
        t = CLOCK[0]  # the router's clock, read once per burst rather than per packet
        if not self.first:
            self.first = t
        self.last = t
        self.out[0](pkt)

    def rate(self) -> float:
        """Packets per second between the first and the last packet."""
        span = self.last - self.first
        return (self.packets - 1) / span if self.packets > 1 and span > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["classes"] = {
            self.cls or self.name: {
                "packets": self.packets,
                "bytes": self.bytes,
                "rate_pps": round(self.rate(), 1),
            }
        }
        return s


class AverageCounter(Counter):
    """A Counter whose rate is the average over the active period (Click's AverageCounter)."""


class Discard(Element):
    """Drops everything and counts it as drops under its name (or `Discard(REASON)`)."""

    NOUT = 0

    def __init__(self, reason: str = ""):
        super().__init__()
        self.reason = reason

    def push(self, pkt: Packet, port: int = 0) -> None:
        self.dropped += 1

    def stats(self) -> dict[str, Any]:
        return {"drops": {self.reason or self.name: self.dropped}}


class Tee(Element):
    """Copies each packet to all N outputs (output 0 gets the original)."""

    def __init__(self, n: str = "2"):
        super().__init__()
        self._ports(int(n))

    def push(self, pkt: Packet, port: int = 0) -> None:
        for o in self.out[1:]:
            c = Packet(bytearray(pkt.data), pkt.dev)
            c.paint = pkt.paint
            o(c)
        self.out[0](pkt)


class Print(Element):
    """Prints a one-line summary of each packet, then passes it on."""

    def __init__(self, label: str = ""):
        super().__init__()
        self.label = label

    def push(self, pkt: Packet, port: int = 0) -> None:
        pkt.parse()
        what = f"ethertype 0x{pkt.ethertype:04x}"
        if pkt.l4 >= 0:
            what = f"{b2ip(pkt.src_ip())} > {b2ip(pkt.dst_ip())} proto {pkt.proto}"
        print(f"{self.label}: {len(pkt.data)} bytes {what} (from {pkt.dev})", flush=True)
        self.out[0](pkt)


# -- classification ----------------------------------------------------------
class IPClassifier(Element):
    """Sends a packet to the output of the first pattern it matches (filter
    language, see nslab.nf.filter); unmatched packets are dropped and counted."""

    def __init__(self, *patterns: str):
        super().__init__()
        if not patterns:
            raise NslabError("IPClassifier needs at least one pattern, e.g. IPClassifier(arp, -)")
        self.patterns = list(patterns)
        self.preds = [compile_filter(p) for p in patterns]
        self._ports(len(patterns))
        self._table = list(zip(self.preds, range(len(patterns)), strict=False))

    def push(self, pkt: Packet, port: int = 0) -> None:
        for pred, i in self._table:
            if pred(pkt):
                self.out[i](pkt)
                return
        self.dropped += 1


class Classifier(IPClassifier):
    """Click's byte-pattern classifier: each pattern is `OFFSET/HEX[%MASK]`
    terms (all must match) or `-`; e.g. Classifier(12/0806, 12/0800, -)."""

    def __init__(self, *patterns: str):
        Element.__init__(self)
        if not patterns:
            raise NslabError("Classifier needs at least one pattern, e.g. Classifier(12/0806, -)")
        self.patterns = list(patterns)
        self.preds = [self._compile(p) for p in patterns]
        self._ports(len(patterns))
        self._table = list(zip(self.preds, range(len(patterns)), strict=False))

    @staticmethod
    def _compile(pattern: str):
        pattern = pattern.strip()
        if pattern == "-":
            return lambda p: True
        terms = []
        for term in pattern.split():
            try:
                off_s, val_s = term.split("/", 1)
                mask_s = None
                if "%" in val_s:
                    val_s, mask_s = val_s.split("%", 1)
                val = bytes.fromhex(val_s)
                mask = bytes.fromhex(mask_s) if mask_s else b"\xff" * len(val)
                off = int(off_s)
                if len(mask) != len(val):
                    raise ValueError
            except ValueError:
                raise NslabError(
                    f"Classifier pattern {term!r}: expected OFFSET/HEX[%MASK], e.g. 12/0806"
                ) from None
            terms.append((off, val, mask))

        def pred(p: Packet) -> bool:
            d = p.data
            for off, val, mask in terms:
                if len(d) < off + len(val):
                    return False
                for i, v in enumerate(val):
                    if d[off + i] & mask[i] != v & mask[i]:
                        return False
            return True

        return pred


class Search(Element):
    """Looks for any of the patterns in the L4 payload (offsets from IHL and
    the TCP data offset). Output 0: found; output 1: not found.
    `Search(cat /etc/passwd, INSERT, nocase=true)`."""

    def __init__(self, *patterns: str, nocase: str = "true"):
        super().__init__()
        self.nocase = _bool(nocase)
        self.patterns = [p.encode() for p in patterns]
        if self.nocase:
            self.patterns = [p.lower() for p in self.patterns]
        self._ports(2)
        self.matches = 0

    def found(self, data: bytes) -> bool:
        if self.nocase:
            data = data.lower()
        return any(p in data for p in self.patterns)

    def push(self, pkt: Packet, port: int = 0) -> None:
        if self.found(pkt.payload()):
            self.matches += 1
            self.out[0](pkt)
        else:
            self.out[1](pkt)


# -- rewriting ---------------------------------------------------------------
class EtherRewrite(Element):
    """Sets the Ethernet source and destination (MACs or interface names; `-` keeps)."""

    def __init__(self, src: str = "-", dst: str = "-"):
        super().__init__()
        self.src = None if src == "-" else _mac(src)
        self.dst = None if dst == "-" else _mac(dst)

    def push(self, pkt: Packet, port: int = 0) -> None:
        if self.dst is not None:
            pkt.data[0:6] = self.dst
        if self.src is not None:
            pkt.data[6:12] = self.src
        self.out[0](pkt)


class DecIPTTL(Element):
    """Decrements the IPv4 TTL. Output 0: ok; output 1: expired."""

    def __init__(self):
        super().__init__()
        self._ports(2)

    def push(self, pkt: Packet, port: int = 0) -> None:
        if dec_ttl(pkt):
            self.out[0](pkt)
        else:
            self.out[1](pkt)


class ARPResponder(Element):
    """Answers ARP requests for its addresses: `ARPResponder(10.0.0.1 eth0, 100.0.0.45
    02:00:00:00:00:45)`; an entry may be a network `10.0.0.0/24 MAC` (proxy ARP) and
    `except=IP IP...` excludes addresses. Output 0: replies; output 1: the rest."""

    def __init__(self, *entries: str, **kw: str):
        super().__init__()
        self._ports(2)
        self.table: list[tuple[ipaddress.IPv4Network, bytes]] = []
        for e in entries:
            parts = e.split()
            if len(parts) != 2:
                raise NslabError(f"ARPResponder entry {e!r}: expected 'IP[/LEN] MAC-or-interface'")
            self.table.append((ipaddress.IPv4Network(parts[0], strict=False), _mac(parts[1])))
        self.exclude = {ip2b(x) for x in kw.get("except", "").split()}
        self.replies = 0

    def lookup(self, ip: bytes) -> bytes | None:
        if ip in self.exclude:
            return None
        a = ipaddress.IPv4Address(ip)
        for net, mac in self.table:
            if a in net:
                return mac
        return None

    def push(self, pkt: Packet, port: int = 0) -> None:
        d = pkt.data
        if len(d) >= 42 and d[12:14] == b"\x08\x06" and d[20:22] == b"\x00\x01":
            sha, spa, tpa = bytes(d[22:28]), bytes(d[28:32]), bytes(d[38:42])
            mac = self.lookup(tpa)
            if mac is not None and spa != tpa:  # not a gratuitous ARP
                self.replies += 1
                self.out[0](Packet(arp_frame(2, mac, tpa, sha, spa), pkt.dev))
                return
        self.out[1](pkt)


class ARPQuerier(Element):
    """Fills in Ethernet addresses of IPv4 frames from an ARP table it learns.
    `ARPQuerier(MY_IP, MY_MAC-or-interface, gateway=IP, net=CIDR)`.
    Input 0: IPv4 frames (next hop = destination, or the gateway when the
    destination is outside `net`); input 1: ARP frames seen on that link (learned).
    Output 0: ready frames and ARP requests. Unresolved frames wait (bounded)."""

    NIN = 2

    def __init__(self, ip: str, mac: str, gateway: str = "", net: str = "", timeout: str = "300"):
        super().__init__()
        self.ip = ip2b(ip)
        self.mac = _mac(mac)
        self.gateway = ip2b(gateway) if gateway else None
        self.net = ipaddress.IPv4Network(net, strict=False) if net else None
        self.timeout = float(timeout)
        self.table: dict[bytes, tuple[bytes, float]] = {}
        self.waiting: dict[bytes, deque[Packet]] = {}
        self.asked: dict[bytes, tuple[float, int]] = {}
        self.queries = 0

    def learn(self, ip: bytes, mac: bytes) -> None:
        self.table[ip] = (mac, time.monotonic() + self.timeout)
        q = self.waiting.pop(ip, None)
        self.asked.pop(ip, None)
        if q:
            for p in q:
                p.data[0:6] = mac
                p.data[6:12] = self.mac
                self.out[0](p)

    def next_hop(self, pkt: Packet) -> bytes:
        dst = pkt.dst_ip()
        if self.gateway and self.net and ipaddress.IPv4Address(dst) not in self.net:
            return self.gateway
        return dst

    def push(self, pkt: Packet, port: int = 0) -> None:
        d = pkt.data
        if port == 1:
            if len(d) >= 42 and d[12:14] == b"\x08\x06":
                spa = bytes(d[28:32])
                if spa != b"\x00\x00\x00\x00":
                    self.learn(spa, bytes(d[22:28]))
            return
        if not pkt.is_ip():
            self.dropped += 1
            return
        nh = self.next_hop(pkt)
        hit = self.table.get(nh)
        if hit and hit[1] > time.monotonic():
            d[0:6] = hit[0]
            d[6:12] = self.mac
            self.out[0](pkt)
            return
        q = self.waiting.setdefault(nh, deque())
        if len(q) >= 64:
            self.dropped += 1
            q.popleft()
        q.append(pkt)
        if nh not in self.asked:
            self._ask(nh, 1)

    def _ask(self, ip: bytes, attempt: int) -> None:
        self.queries += 1
        self.asked[ip] = (time.monotonic(), attempt)
        self.out[0](Packet(arp_frame(1, self.mac, self.ip, b"\xff" * 6, ip)))

    def tick(self, now: float) -> None:
        for ip, (t, attempt) in list(self.asked.items()):
            if now - t >= 1.0:
                if attempt >= 5:  # give up: drop what waited
                    self.dropped += len(self.waiting.pop(ip, ()))
                    del self.asked[ip]
                else:
                    self._ask(ip, attempt + 1)


class ICMPPingResponder(Element):
    """Turns ICMP echo requests into replies (addresses and MACs swapped).
    Output 0: replies; output 1: anything that is not an echo request."""

    def __init__(self, mac: str = ""):
        super().__init__()
        self._ports(2)
        self.mac = _mac(mac) if mac else None
        self.replies = 0

    def push(self, pkt: Packet, port: int = 0) -> None:
        pkt.parse()
        d = pkt.data
        if pkt.proto == PROTO_ICMP and pkt.pay >= 0 and d[pkt.l4] == 8:
            self.replies += 1
            icmp_echo_reply(pkt, self.mac or bytes(d[0:6]))
            self.out[0](pkt)
        else:
            self.out[1](pkt)
