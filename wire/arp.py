"""ARP for IPv4 over ethernet (RFC 826): parse a request, build replies and requests."""
from __future__ import annotations

import struct

from .ethernet import FrameError

ARP = struct.Struct("!HHBBH6s4s6s4s")
ARP_LEN = ARP.size
OP_REQUEST = 1
OP_REPLY = 2


class ArpPacket:
    __slots__ = ("op", "sha", "spa", "tha", "tpa")

    def __init__(self, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes):
        self.op, self.sha, self.spa, self.tha, self.tpa = op, sha, spa, tha, tpa

    def __bytes__(self) -> bytes:
        return ARP.pack(1, 0x0800, 6, 4, self.op, self.sha, self.spa, self.tha, self.tpa)


def parse_arp(buf, off: int = 0) -> ArpPacket:
    if len(buf) - off < ARP_LEN:
        raise FrameError("truncated ARP packet")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP.unpack_from(buf, off)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise FrameError("ARP for something other than IPv4 over ethernet")
    if op not in (OP_REQUEST, OP_REPLY):
        raise FrameError(f"ARP opcode {op}")
    return ArpPacket(op, sha, spa, tha, tpa)
