"""A small, readable packet filter language (tcpdump-like), compiled to a
Python predicate over a `Packet`.

    arp | arp request | arp reply | ip | icmp | icmp type echo | tcp | udp
    [ip] [src|dst] host 10.0.0.1      [src|dst] net 10.0.0.0/24
    [tcp|udp] [src|dst] port 80       tcp syn | tcp fin | tcp rst | tcp ack
    payload        (TCP/UDP segment that carries data)
    - | any | true (everything)
    combined with and / or / not / parentheses; `&&`, `||`, `!` also work.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from nslab.errors import NslabError
from nslab.nf.packet import (
    ETH_ARP,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
)

Pred = Callable[[Packet], bool]

_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[^\s()!]+)")
_ICMP_TYPES = {"echo-reply": 0, "echo_reply": 0, "unreachable": 3, "echo": 8, "echo-request": 8}
_FLAGS = {"syn": TCP_SYN, "fin": TCP_FIN, "rst": TCP_RST, "ack": TCP_ACK}


class FilterError(NslabError):
    pass


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FilterError(f"filter {text!r}: cannot read at {text[pos:]!r}")
        out.append(m.group(1).lower())
        pos = m.end()
    return out


def _is_arp(p: Packet) -> bool:
    return p.parse().ethertype == ETH_ARP


def _is_ip(p: Packet) -> bool:
    return p.parse().l4 >= 0


def _proto(n: int) -> Pred:
    return lambda p: p.parse().proto == n


def _ports_ok(p: Packet) -> bool:
    return p.proto in (PROTO_TCP, PROTO_UDP) and p.pay > p.l4


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def err(self, msg: str) -> FilterError:
        return FilterError(f"filter {self.text!r}: {msg}")

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        if self.i >= len(self.toks):
            raise self.err("unexpected end")
        t = self.toks[self.i]
        self.i += 1
        return t

    def parse(self) -> Pred:
        if not self.toks:
            raise self.err("empty filter (use `-` to match everything)")
        pred = self.expr()
        if self.peek() is not None:
            raise self.err(f"unexpected {self.peek()!r}")
        return pred

    def expr(self) -> Pred:
        left = self.term()
        while self.peek() in ("or", "||"):
            self.take()
            right = self.term()
            left = (lambda a, b: lambda p: a(p) or b(p))(left, right)
        return left

    def term(self) -> Pred:
        left = self.factor()
        while True:
            t = self.peek()
            if t in ("and", "&&"):
                self.take()
            elif t is None or t in ("or", "||", ")"):
                return left
            # juxtaposition means `and` (e.g. `tcp dst port 80`)
            right = self.factor()
            left = (lambda a, b: lambda p: a(p) and b(p))(left, right)

    def factor(self) -> Pred:
        t = self.take()
        if t in ("not", "!"):
            inner = self.factor()
            return lambda p: not inner(p)
        if t == "(":
            inner = self.expr()
            if self.take() != ")":
                raise self.err("missing `)`")
            return inner
        if t in ("-", "any", "true", "all"):
            return lambda p: True
        if t == "arp":
            nxt = self.peek()
            if nxt in ("request", "reply"):
                self.take()
                op = 1 if nxt == "request" else 2
                return lambda p: _is_arp(p) and len(p.data) >= 22 and p.data[21] == op
            return _is_arp
        if t == "ip":
            if self.peek() in ("src", "dst", "host", "net"):
                return self.addr()
            return _is_ip
        if t == "icmp":
            base = _proto(PROTO_ICMP)
            if self.peek() == "type":
                self.take()
                v = self.take()
                code = _ICMP_TYPES.get(v)
                if code is None:
                    code = self.number(v, 255)
                return lambda p: base(p) and p.pay > p.l4 and p.data[p.l4] == code
            return base
        if t in ("tcp", "udp"):
            base = _proto(PROTO_TCP if t == "tcp" else PROTO_UDP)
            nxt = self.peek()
            if nxt in ("src", "dst", "port"):
                port = self.port()
                return lambda p: base(p) and port(p)
            if t == "tcp" and nxt in _FLAGS:
                flag = _FLAGS[self.take()]
                return lambda p: base(p) and bool(p.tcp_flags() & flag)
            return base
        if t in ("src", "dst", "host", "net"):
            self.i -= 1
            if (
                t in ("src", "dst")
                and self.i + 1 < len(self.toks)
                and self.toks[self.i + 1] == "port"
            ):
                return self.port()
            return self.addr()
        if t == "port":
            self.i -= 1
            return self.port()
        if t == "payload":
            return lambda p: (
                p.parse().pay >= 0 and p.proto in (PROTO_TCP, PROTO_UDP) and p.end > p.pay
            )
        raise self.err(f"unknown word {t!r} (see the filter syntax in docs/nf-toolkit.md)")

    def number(self, v: str, maximum: int) -> int:
        try:
            n = int(v, 0)
        except ValueError:
            raise self.err(f"{v!r} is not a number") from None
        if not 0 <= n <= maximum:
            raise self.err(f"{n} out of range 0..{maximum}")
        return n

    def direction(self) -> str:
        if self.peek() in ("src", "dst"):
            return self.take()
        return "either"

    def addr(self) -> Pred:
        d = self.direction()
        kind = self.take()
        if kind not in ("host", "net"):
            raise self.err(f"expected `host` or `net`, got {kind!r}")
        v = self.take()
        try:
            net = ipaddress.IPv4Network(v if kind == "net" else f"{v}/32", strict=False)
        except ValueError:
            raise self.err(
                f"{v!r} is not an IPv4 {'network' if kind == 'net' else 'address'}"
            ) from None
        lo = int(net.network_address)
        mask = int(net.netmask)

        def match_at(p: Packet, off: int) -> bool:
            a = int.from_bytes(p.data[off : off + 4], "big")
            return (a & mask) == lo

        if d == "src":
            return lambda p: _is_ip(p) and match_at(p, p.l3 + 12)
        if d == "dst":
            return lambda p: _is_ip(p) and match_at(p, p.l3 + 16)
        return lambda p: _is_ip(p) and (match_at(p, p.l3 + 12) or match_at(p, p.l3 + 16))

    def port(self) -> Pred:
        d = self.direction()
        if self.take() != "port":
            raise self.err("expected `port`")
        n = self.number(self.take(), 65535)
        if d == "src":
            return lambda p: _is_ip(p) and _ports_ok(p) and p.sport() == n
        if d == "dst":
            return lambda p: _is_ip(p) and _ports_ok(p) and p.dport() == n
        return lambda p: _is_ip(p) and _ports_ok(p) and n in (p.sport(), p.dport())


def compile_filter(text: str) -> Pred:
    """Compile a filter expression into a predicate; raises FilterError on bad input."""
    return _Parser(text).parse()
