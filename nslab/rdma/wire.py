"""RoCEv2 wire format: BTH, RETH, AETH, ImmDt and the invariant CRC (ICRC).

A RoCEv2 packet is IPv4 / UDP (dport 4791) / BTH [/ RETH | AETH] [/ ImmDt] /
payload (padded to 4 bytes) / ICRC. The kernel builds the IP and UDP headers
(we use a plain UDP socket); this module builds and parses everything after
them. The ICRC covers the IP and UDP headers too, with the fields that routers
may change masked to ones (IB spec annex A17.3.3): a pseudo LRH of 8 x 0xff,
IP TOS/TTL/checksum, UDP checksum, and BTH FECN/BECN/resv6.
"""

from __future__ import annotations

import struct
import zlib

ROCEV2_PORT = 4791
PKEY_DEFAULT = 0xFFFF
PSN_MASK = 0xFFFFFF

# RC opcodes (BTH opcode, transport 000 = RC).
SEND_FIRST = 0x00
SEND_MIDDLE = 0x01
SEND_LAST = 0x02
SEND_LAST_IMM = 0x03
SEND_ONLY = 0x04
SEND_ONLY_IMM = 0x05
WRITE_FIRST = 0x06
WRITE_MIDDLE = 0x07
WRITE_LAST = 0x08
WRITE_LAST_IMM = 0x09
WRITE_ONLY = 0x0A
WRITE_ONLY_IMM = 0x0B
READ_REQUEST = 0x0C
READ_RESP_FIRST = 0x0D
READ_RESP_MIDDLE = 0x0E
READ_RESP_LAST = 0x0F
READ_RESP_ONLY = 0x10
ACK = 0x11

OPCODE_NAMES = {
    v: k for k, v in dict(globals()).items() if isinstance(v, int) and k.isupper() and v <= 0x11
}
OPCODE_NAMES.update({ACK: "ACK", SEND_FIRST: "SEND_FIRST"})

# Header layout per opcode: which extension headers follow the BTH.
HAS_RETH = frozenset({WRITE_FIRST, WRITE_ONLY, WRITE_ONLY_IMM, READ_REQUEST})
HAS_IMM = frozenset({SEND_LAST_IMM, SEND_ONLY_IMM, WRITE_LAST_IMM, WRITE_ONLY_IMM})
HAS_AETH = frozenset({READ_RESP_FIRST, READ_RESP_LAST, READ_RESP_ONLY, ACK})

# AETH syndromes (bits 7..5: 000 ACK, 001 RNR NAK, 011 NAK; low 5 bits: credits/timer/code).
SYN_ACK = 0x1F  # ACK with "invalid credit count": no end-to-end flow control
SYN_RNR_NAK = 0x20
SYN_NAK_PSN_SEQ = 0x60
SYN_NAK_INV_REQ = 0x61
SYN_NAK_REM_ACCESS = 0x62
SYN_NAK_REM_OP = 0x63

BTH = struct.Struct("!BBHI I")  # opcode, SE|M|pad|tver, pkey, resv8a|dqpn, A|resv7|psn
RETH = struct.Struct("!QII")
AETH = struct.Struct("!I")
IMM = struct.Struct("!I")
ICRC = struct.Struct("<I")  # the CRC's bytes go on the wire least significant first

# Pseudo header for the ICRC: 8 bytes of ones (the masked LRH), then IPv4 with
# TOS, TTL and checksum masked, then UDP with its checksum masked.
_PSEUDO = struct.Struct("!8sBBHHHBBH4s4sHHHH")
_ONES8 = b"\xff" * 8
IP_DF = 0x4000


def psn_add(psn: int, n: int) -> int:
    return (psn + n) & PSN_MASK


def psn_diff(a: int, b: int) -> int:
    """a - b in 24-bit serial arithmetic, in [-2^23, 2^23)."""
    d = (a - b) & PSN_MASK
    return d - 0x1000000 if d & 0x800000 else d


def icrc_seed(src_ip: bytes, dst_ip: bytes, sport: int, dport: int, roce_len: int, ip_id: int = 0) -> int:  # fmt: skip
    """CRC32 state after the pseudo LRH + masked IPv4 + masked UDP headers, for a
    RoCE payload (BTH..ICRC inclusive) of `roce_len` bytes. The IP ID is 0
    because our sockets set DF and are unconnected (Linux then sends ID 0);
    a UDP GSO batch numbers its segments 0, 1, 2, ... instead."""
    udp_len = 8 + roce_len
    hdr = _PSEUDO.pack(
        _ONES8, 0x45, 0xFF, 20 + udp_len, ip_id, IP_DF, 0xFF, 17, 0xFFFF, src_ip, dst_ip,
        sport, dport, udp_len, 0xFFFF,
    )  # fmt: skip
    return zlib.crc32(hdr)


GSO_MAX_SEGS = 60  # segments per UDP GSO send (the kernel allows 64...
GSO_MAX_BYTES = 65000  # ...within one 64 KiB datagram)
_ID_DELTAS: dict[int, dict[int, int]] = {}


def id_deltas(roce_len: int) -> dict[int, int]:
    """{ICRC xor difference: IP ID} for IDs 1..GSO_MAX_SEGS-1 at this length.

    A UDP socket does not see the IP header of what it receives, so the
    receiver computes the ICRC with IP ID 0; a segment of a GSO batch carries
    ID i, and CRC32 being affine, the two ICRCs differ by a constant that
    depends only on i and the length. A packet whose ICRC differs by one of
    these constants is intact (its ID was i)."""
    d = _ID_DELTAS.get(roce_len)
    if d is None:
        n = 8 + 20 + 8 + roce_len - 4
        zero = bytearray(n)
        base = zlib.crc32(zero)
        d = {}
        for i in range(1, GSO_MAX_SEGS):
            zero[12:14] = i.to_bytes(2, "big")  # the IP ID, after the 8-byte pseudo LRH
            d[zlib.crc32(zero) ^ base] = i
        zero[12:14] = b"\0\0"
        if len(_ID_DELTAS) > 64:
            _ID_DELTAS.clear()
        _ID_DELTAS[roce_len] = d
    return d


def icrc(seed: int, pkt, rest=b"") -> int:
    """ICRC of a packet (BTH onwards, without its ICRC) given its pseudo-header
    seed; `rest` continues the packet. The BTH's resv8a byte (FECN, BECN,
    resv6) counts as 0xff whatever it holds."""
    crc = zlib.crc32(pkt[5:], zlib.crc32(b"\xff", zlib.crc32(pkt[:4], seed)))
    return zlib.crc32(rest, crc) if rest else crc


def pack_bth(
    opcode: int, dqpn: int, psn: int, ackreq: bool = False, pad: int = 0, se: bool = False
) -> bytes:
    b1 = (0x80 if se else 0) | (pad << 4)  # TVer 0, M 0
    return BTH.pack(
        opcode, b1, PKEY_DEFAULT, dqpn & 0xFFFFFF, (0x80000000 if ackreq else 0) | (psn & PSN_MASK)
    )


def unpack_bth(buf) -> tuple[int, int, int, int, bool, int]:
    """(opcode, pad, pkey, dqpn, ackreq, psn)"""
    op, b1, pkey, dq, ap = BTH.unpack_from(buf, 0)
    return op, (b1 >> 4) & 3, pkey, dq & 0xFFFFFF, bool(ap & 0x80000000), ap & PSN_MASK


def describe(payload: bytes) -> dict:
    """Decode a RoCEv2 UDP payload into a dict (for tests, logs and students)."""
    op, pad, pkey, dqpn, ackreq, psn = unpack_bth(payload)
    d = {
        "opcode": op,
        "name": OPCODE_NAMES.get(op, hex(op)),
        "dqpn": dqpn,
        "psn": psn,
        "ackreq": ackreq,
        "pad": pad,
    }
    off = 12
    if op in HAS_RETH:
        d["va"], d["rkey"], d["dma_len"] = RETH.unpack_from(payload, off)
        off += 16
    if op in HAS_AETH:
        (a,) = AETH.unpack_from(payload, off)
        d["syndrome"], d["msn"] = a >> 24, a & 0xFFFFFF
        off += 4
    if op in HAS_IMM:
        (d["imm"],) = IMM.unpack_from(payload, off)
        off += 4
    d["data"] = bytes(payload[off : len(payload) - 4 - pad])
    (d["icrc"],) = ICRC.unpack_from(payload, len(payload) - 4)
    return d
