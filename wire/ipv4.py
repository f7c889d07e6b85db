"""IPv4 headers (RFC 791): parse with integrity checks, build with checksum."""
from __future__ import annotations

import struct

from .checksum import checksum
from .ethernet import FrameError

IPV4 = struct.Struct("!BBHHHBBH4s4s")
IPV4_LEN = 20
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17


class Ipv4Header:
    """A parsed IPv4 header; ``payload`` is (start, end) offsets into the frame buffer."""

    __slots__ = ("ihl", "tos", "total", "ident", "flags_frag", "ttl", "proto", "src", "dst", "start", "end")

    def __init__(self, ihl, tos, total, ident, flags_frag, ttl, proto, src, dst, start, end):
        self.ihl, self.tos, self.total, self.ident = ihl, tos, total, ident
        self.flags_frag, self.ttl, self.proto, self.src, self.dst = flags_frag, ttl, proto, src, dst
        self.start, self.end = start, end

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags_frag & 0x3FFF)  # MF set or offset nonzero


def parse_ipv4(buf, off: int, verify: bool = True) -> Ipv4Header:
    """Parse the IPv4 header at ``off`` in ``buf``; trailing ethernet padding is ignored."""
    avail = len(buf) - off
    if avail < IPV4_LEN:
        raise FrameError("truncated IPv4 header")
    vihl, tos, total, ident, ff, ttl, proto, _cs, src, dst = IPV4.unpack_from(buf, off)
    if vihl >> 4 != 4:
        raise FrameError("not IPv4")
    ihl = (vihl & 15) * 4
    if ihl < IPV4_LEN or ihl > avail:
        raise FrameError("bad IPv4 header length")
    if total == 0 and avail > 65535:
        total = avail  # TSO super-frame: the kernel may leave total length 0
    if total < ihl or total > avail:
        raise FrameError("bad IPv4 total length")
    if verify and checksum(memoryview(buf)[off : off + ihl]) != 0:
        raise FrameError("bad IPv4 header checksum")
    return Ipv4Header(ihl, tos, total, ident, ff, ttl, proto, src, dst, off + ihl, off + total)


def build_ipv4(src: bytes, dst: bytes, proto: int, payload_len: int, *, ttl: int = 64, ident: int = 0, tos: int = 0, df: bool = True) -> bytearray:
    """An IPv4 header (no options) for a payload of ``payload_len`` bytes, checksum filled."""
    total = IPV4_LEN + payload_len
    hdr = bytearray(IPV4.pack(0x45, tos, total if total <= 0xFFFF else 0, ident & 0xFFFF, 0x4000 if df else 0, ttl, proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return hdr
