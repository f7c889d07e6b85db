"""TCP header (RFC 9293) with options (RFC 7323 window scale/timestamps, RFC 2018 SACK).

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |          Source Port          |       Destination Port        |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |                        Sequence Number                        |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |                    Acknowledgment Number                      |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |  Data |       |C|E|U|A|P|R|S|F|                               |
   | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
   |       |       |R|E|G|K|H|T|N|N|                               |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |           Checksum            |         Urgent Pointer        |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |                    Options                    |    Padding    |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

``parse_tcp`` checks integrity (length, data offset, checksum) before reading options; every
option read is bounded by the header end. Malformed input raises :class:`TcpError`. The payload
is returned as a ``memoryview`` slice of the caller's buffer (no copy): copy it if the buffer is
reused. ``build_tcp`` returns the whole segment as ``bytes`` with the checksum filled in.
"""
from __future__ import annotations

import struct

from .checksum import checksum, ones_sum, pseudo_ipv4, pseudo_ipv6

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

PROTO_TCP = 6
TCP_HDR_LEN = 20
MAX_OPT_LEN = 40

HDR = struct.Struct("!HHIIHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TS = struct.Struct("!II")
_MSS_OPT = struct.Struct("!BBH")
_TS_OPT = struct.Struct("!BBII")
_SACK_BLOCK = struct.Struct("!II")

# Option kinds.
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TS = 8

_TS_FAST = b"\x01\x01\x08\x0a"  # NOP NOP TS(10): what Linux puts on every data segment
_FLAG_NAMES = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
               (ECE, "E"), (CWR, "W"))


class TcpError(ValueError):
    """Malformed TCP segment (bad bytes from the peer)."""


class Segment:
    """One TCP segment, decoded. ``window`` is the raw 16-bit field (unscaled);
    ``payload`` is bytes-like (a memoryview after parsing)."""

    __slots__ = ("sport", "dport", "seq", "ack", "flags", "window", "urg", "mss", "wscale",
                 "sack_perm", "ts", "sack", "payload")

    def __init__(self, sport: int = 0, dport: int = 0, seq: int = 0, ack: int = 0,
                 flags: int = 0, window: int = 0, payload=b"", *, mss: int | None = None,
                 wscale: int | None = None, sack_perm: bool = False,
                 ts: tuple[int, int] | None = None, sack: list | None = None, urg: int = 0):
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.payload = payload
        self.mss = mss
        self.wscale = wscale
        self.sack_perm = sack_perm
        self.ts = ts
        self.sack = sack if sack is not None else []
        self.urg = urg

    @property
    def seg_len(self) -> int:
        """Sequence space occupied: payload length plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN) // SYN + (self.flags & FIN)

    def flag_str(self) -> str:
        return "".join(c for f, c in _FLAG_NAMES if self.flags & f) or "-"

    def __eq__(self, other):
        if not isinstance(other, Segment):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__
                   if k not in ("payload", "sack")) and \
            bytes(self.payload) == bytes(other.payload) and \
            [tuple(b) for b in self.sack] == [tuple(b) for b in other.sack]

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        parts = [f"{self.sport}>{self.dport}", self.flag_str(), f"seq={self.seq}",
                 f"ack={self.ack}", f"win={self.window}", f"len={len(self.payload)}"]
        if self.mss is not None:
            parts.append(f"mss={self.mss}")
        if self.wscale is not None:
            parts.append(f"ws={self.wscale}")
        if self.sack_perm:
            parts.append("sackOK")
        if self.ts is not None:
            parts.append(f"ts={self.ts[0]}/{self.ts[1]}")
        if self.sack:
            parts.append("sack=" + ",".join(f"{a}-{b}" for a, b in self.sack))
        return f"Segment({' '.join(parts)})"


def _parse_options(seg: Segment, buf, off: int, end: int) -> None:
    if end - off == 12 and bytes(buf[off:off + 4]) == _TS_FAST:
        seg.ts = _TS.unpack_from(buf, off + 4)
        return
    while off < end:
        kind = buf[off]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            off += 1
            continue
        if off + 1 >= end:
            raise TcpError("truncated TCP option")
        olen = buf[off + 1]
        if olen < 2 or off + olen > end:
            raise TcpError(f"bad TCP option length {olen} for kind {kind}")
        if kind == OPT_MSS:
            if olen != 4:
                raise TcpError("bad MSS option length")
            seg.mss = _U16.unpack_from(buf, off + 2)[0]
        elif kind == OPT_WSCALE:
            if olen != 3:
                raise TcpError("bad window scale option length")
            seg.wscale = buf[off + 2]
        elif kind == OPT_SACK_PERM:
            if olen != 2:
                raise TcpError("bad SACK-permitted option length")
            seg.sack_perm = True
        elif kind == OPT_SACK:
            if (olen - 2) % 8 or olen == 2:
                raise TcpError("bad SACK option length")
            seg.sack = [_SACK_BLOCK.unpack_from(buf, p) for p in range(off + 2, off + olen, 8)]
        elif kind == OPT_TS:
            if olen != 10:
                raise TcpError("bad timestamp option length")
            seg.ts = _TS.unpack_from(buf, off + 2)
        # unknown options: skipped
        off += olen


def parse_tcp(buf, *, src: bytes | None = None, dst: bytes | None = None,
              verify: bool = True) -> Segment:
    """Decode the TCP segment that is the whole of ``buf``.

    With ``src``/``dst`` (4-byte IPv4 or 16-byte IPv6 addresses) and ``verify``, the checksum
    is checked against the pseudo header. Raises :class:`TcpError` on malformed input.
    """
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    n = len(mv)
    if n < TCP_HDR_LEN:
        raise TcpError("truncated TCP header")
    sport, dport, seq, ack, offflags, window, _cs, urg = HDR.unpack_from(mv, 0)
    doff = (offflags >> 12) * 4
    if doff < TCP_HDR_LEN or doff > n:
        raise TcpError(f"bad TCP data offset {doff}")
    if verify and src is not None:
        if dst is None or len(src) != len(dst):
            raise ValueError("src and dst must both be IPv4 or both IPv6 addresses")
        if len(src) == 4:
            ph = pseudo_ipv4(src, dst, PROTO_TCP, n)
        elif len(src) == 16:
            ph = pseudo_ipv6(src, dst, PROTO_TCP, n)
        else:
            raise ValueError("addresses must be 4 or 16 bytes")
        if checksum(mv, ph) != 0:
            raise TcpError("bad TCP checksum")
    seg = Segment(sport, dport, seq, ack, offflags & 0xFF, window, mv[doff:], urg=urg)
    if doff > TCP_HDR_LEN:
        _parse_options(seg, mv, TCP_HDR_LEN, doff)
    return seg


def build_options(seg: Segment) -> bytes:
    """Encode the options of ``seg`` (4-byte aligned, at most 40 bytes; SACK blocks that do
    not fit are left out, the first ones are kept)."""
    o = bytearray()
    if seg.mss is not None:
        o += _MSS_OPT.pack(OPT_MSS, 4, seg.mss)
    if seg.ts is not None:
        if seg.sack_perm:
            o += b"\x04\x02"  # SACK-permitted packed in front of TS, like Linux
        else:
            o += b"\x01\x01"
        o += _TS_OPT.pack(OPT_TS, 10, seg.ts[0] & 0xFFFFFFFF, seg.ts[1] & 0xFFFFFFFF)
    elif seg.sack_perm:
        o += b"\x01\x01\x04\x02"
    if seg.wscale is not None:
        o += b"\x01\x03\x03" + bytes((seg.wscale,))
    if seg.sack:
        nblocks = min(len(seg.sack), (MAX_OPT_LEN - len(o) - 4) // 8)
        if nblocks > 0:
            o += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * nblocks))
            for left, right in seg.sack[:nblocks]:
                o += _SACK_BLOCK.pack(left & 0xFFFFFFFF, right & 0xFFFFFFFF)
    if len(o) > MAX_OPT_LEN:
        raise ValueError("TCP options too long")
    return bytes(o)


def options_len(seg: Segment) -> int:
    return len(build_options(seg))


def build_tcp(seg: Segment, src: bytes, dst: bytes) -> bytes:
    """Encode ``seg`` with its checksum computed over the IPv4/IPv6 pseudo header."""
    opts = build_options(seg)
    hlen = TCP_HDR_LEN + len(opts)
    payload = seg.payload
    total = hlen + len(payload)
    hdr = bytearray(hlen)
    HDR.pack_into(hdr, 0, seg.sport, seg.dport, seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF,
                  ((hlen // 4) << 12) | (seg.flags & 0xFF), seg.window, 0, seg.urg)
    hdr[TCP_HDR_LEN:] = opts
    if len(src) == 4:
        ph = pseudo_ipv4(src, dst, PROTO_TCP, total)
    else:
        ph = pseudo_ipv6(src, dst, PROTO_TCP, total)
    # hlen is a multiple of 4, so the payload's words stay aligned when summed separately
    cs = checksum(payload, ones_sum(hdr, ph)) if len(payload) else checksum(hdr, ph)
    _U16.pack_into(hdr, 16, cs)
    if not len(payload):
        return bytes(hdr)
    return b"".join((hdr, payload))
