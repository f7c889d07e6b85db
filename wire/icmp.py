"""ICMPv4 (RFC 792): echo request/reply and destination-unreachable messages."""
from __future__ import annotations

import struct

from .checksum import checksum
from .ethernet import FrameError

ICMP = struct.Struct("!BBHHH")
ECHO_REPLY = 0
DEST_UNREACH = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
# destination-unreachable codes
NET_UNREACH, HOST_UNREACH, PROTO_UNREACH, PORT_UNREACH = 0, 1, 2, 3
ADMIN_PROHIBITED = 13


def parse_icmp(buf, start: int, end: int, verify: bool = True):
    """Return (type, code, rest-of-header u32 as (id, seq), payload memoryview)."""
    if end - start < 8:
        raise FrameError("truncated ICMP header")
    mv = memoryview(buf)[start:end]
    if verify and checksum(mv) != 0:
        raise FrameError("bad ICMP checksum")
    typ, code, _cs, ident, seq = ICMP.unpack_from(mv, 0)
    return typ, code, ident, seq, mv[8:]


def build_icmp(typ: int, code: int, ident: int, seq: int, payload) -> bytes:
    body = ICMP.pack(typ, code, 0, ident, seq) + bytes(payload)
    cs = checksum(body)
    return body[:2] + struct.pack("!H", cs) + body[4:]


def build_unreachable(code: int, original_ip_packet, mtu: int = 0) -> bytes:
    """Destination unreachable quoting the original IP header + 8 bytes (RFC 792/1812)."""
    quote = bytes(original_ip_packet[: min(len(original_ip_packet), 548)])
    return build_icmp(DEST_UNREACH, code, 0, mtu, quote)
