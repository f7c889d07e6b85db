"""Guest frames in, reply frames out: the parsing and building flow does per packet.

``parse(frame)`` returns a :class:`Packet` with offsets into the frame (no copies) or raises
:class:`~wire.ethernet.FrameError` / :class:`Unsupported`. The L4 checksum is not checked here
(TCP and UDP parsers do it); the IPv4 header checksum is.
"""
from __future__ import annotations

import struct

from wire import icmp, ipv4
from wire.checksum import checksum, fold, ones_sum, pseudo_ipv4
from wire.ethernet import ETH_HEADER, ETH_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, FrameError

_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_UDP = struct.Struct("!HHHH")
_ETH_IP = ETH_HEADER.size


class Unsupported(Exception):
    """A well-formed frame flow does not handle (IPv6, other IP protocols); ``reason`` is the
    drop counter name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Packet:
    """An IPv4 packet from a guest. ``ip`` is the parsed header (``start``/``end`` bound the L4
    payload in ``frame``); ``sport``/``dport`` are set for TCP/UDP (None otherwise)."""

    __slots__ = ("frame", "src_mac", "ip", "proto", "src", "dst", "sport", "dport")

    def __init__(self, frame, src_mac, ip, sport, dport):
        self.frame = frame
        self.src_mac = src_mac
        self.ip = ip
        self.proto = ip.proto
        self.src = ip.src
        self.dst = ip.dst
        self.sport = sport
        self.dport = dport

    def l4(self) -> memoryview:
        return memoryview(self.frame)[self.ip.start : self.ip.end]

    def ip_packet(self) -> memoryview:
        return memoryview(self.frame)[ETH_LEN : self.ip.end]


def parse(frame) -> Packet:
    """Parse an ethernet frame addressed to the gateway; raise FrameError or Unsupported."""
    n = len(frame)
    if n < ETH_LEN + ipv4.IPV4_LEN:
        if n >= ETH_LEN and _U16.unpack_from(frame, 12)[0] == ETHERTYPE_IPV6:
            raise Unsupported("ipv6")
        raise FrameError("runt frame")
    (etype,) = _U16.unpack_from(frame, 12)
    if etype != ETHERTYPE_IPV4:
        raise Unsupported("ipv6" if etype == ETHERTYPE_IPV6 else "ethertype")
    ip = ipv4.parse_ipv4(frame, ETH_LEN)
    proto = ip.proto
    sport = dport = None
    if proto == ipv4.PROTO_TCP or proto == ipv4.PROTO_UDP:
        if not ip.flags_frag & 0x1FFF:  # first (or only) fragment carries the ports
            if ip.end - ip.start < 8:
                raise FrameError("truncated L4 header")
            sport, dport = _PORTS.unpack_from(frame, ip.start)
    elif proto != ipv4.PROTO_ICMP:
        raise Unsupported("ip_proto")
    return Packet(frame, bytes(frame[6:12]), ip, sport, dport)


class Builder:
    """Builds reply frames from the gateway MAC; keeps the IPv4 identification counter."""

    def __init__(self, gateway_mac: bytes, mtu: int = 1500):
        self.gw_mac = gateway_mac
        self.mtu = mtu
        self._ident = 0

    def ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def eth(self, dst_mac: bytes) -> bytes:
        return ETH_HEADER.pack(dst_mac, self.gw_mac, ETHERTYPE_IPV4)

    def ip_frame(self, dst_mac: bytes, src: bytes, dst: bytes, proto: int, body, *, df: bool = True) -> bytes:
        hdr = ipv4.build_ipv4(src, dst, proto, len(body), ident=self.ident(), df=df)
        return b"".join((ETH_HEADER.pack(dst_mac, self.gw_mac, ETHERTYPE_IPV4), hdr, body))

    def udp(self, dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, payload) -> list:
        """UDP datagram frames; fragmented when larger than the MTU."""
        length = 8 + len(payload)
        if length > 65535 - 20:
            raise ValueError("UDP payload too large")
        hdr = _UDP.pack(sport, dport, length, 0)
        # the 8-byte header keeps the payload's 16-bit words aligned: sum them apart
        cs = checksum(payload, int.from_bytes(hdr, "big") + pseudo_ipv4(src, dst, 17, length))
        body = _UDP.pack(sport, dport, length, cs or 0xFFFF) + bytes(payload)
        if length + 20 <= self.mtu:
            return [self.ip_frame(dst_mac, src, dst, 17, body, df=False)]
        return self.fragments(dst_mac, src, dst, 17, body)

    def fragments(self, dst_mac: bytes, src: bytes, dst: bytes, proto: int, body) -> list:
        """IPv4 fragments (RFC 791) of one datagram whose L4 bytes are ``body``."""
        ident = self.ident()
        step = (self.mtu - 20) & ~7
        eth = ETH_HEADER.pack(dst_mac, self.gw_mac, ETHERTYPE_IPV4)
        out = []
        mv = memoryview(body)
        for off in range(0, len(body), step):
            chunk = mv[off : off + step]
            more = off + step < len(body)
            hdr = ipv4.build_ipv4(src, dst, proto, len(chunk), ident=ident, df=False)
            ff = (off >> 3) | (0x2000 if more else 0)
            _U16.pack_into(hdr, 6, ff)
            _U16.pack_into(hdr, 10, 0)
            _U16.pack_into(hdr, 10, checksum(hdr))
            out.append(b"".join((eth, hdr, chunk)))
        return out

    def icmp_error(self, dst_mac: bytes, src: bytes, packet: Packet | None, typ: int, code: int,
                   quote=None, guest: bytes | None = None) -> bytes:
        """ICMP error (destination unreachable ...) to the guest quoting its packet (the IP
        header and the start of its payload); ``src`` is the address that "answers"."""
        q = bytes(quote if quote is not None else packet.ip_packet()[: 20 + 8 + 512])
        body = icmp.build_icmp(typ, code, 0, 0, q[:548])
        return self.ip_frame(dst_mac, src, guest if guest is not None else packet.src, ipv4.PROTO_ICMP, body, df=False)

    def echo_reply(self, dst_mac: bytes, src: bytes, dst: bytes, ident: int, seq: int, payload) -> list:
        body = icmp.build_icmp(icmp.ECHO_REPLY, 0, ident, seq, payload)
        if len(body) + 20 <= self.mtu:
            return [self.ip_frame(dst_mac, src, dst, ipv4.PROTO_ICMP, body, df=False)]
        return self.fragments(dst_mac, src, dst, ipv4.PROTO_ICMP, body)


def udp_quote(src: bytes, dst: bytes, sport: int, dport: int, payload) -> bytes:
    """The start of a guest UDP datagram as an ICMP error quotes it (IP header + 8 bytes + a
    little payload), rebuilt from the flow (the original frame is long gone)."""
    length = 8 + len(payload)
    hdr = ipv4.build_ipv4(src, dst, 17, length, df=False)
    return bytes(hdr) + _UDP.pack(sport, dport, length, 0) + bytes(payload[:64])


_TCP_HDR = struct.Struct("!HHIIHHHH")

def tcp_checksum_ok(l4, src: bytes, dst: bytes) -> bool:
    """True when the TCP segment ``l4`` (whole, checksum included) sums to zero."""
    return fold(ones_sum(l4, pseudo_ipv4(src, dst, 6, len(l4)))) == 0xFFFF




def tcp_frame(eth: bytes, src: bytes, dst: bytes, seg, ident: int, partial: bool = False) -> bytes:
    """One ethernet frame carrying ``seg`` (a wire.tcp.Segment) from ``src`` to ``dst``: the
    same bytes as ``eth + build_ipv4(...) + build_tcp(seg, src, dst)`` with the payload copied
    once (this is the hot path of every byte sent to a guest).

    ``partial``: leave only the folded pseudo-header sum in the checksum field
    (CHECKSUM_PARTIAL, see bus/endpoints.py): no pass over the payload at all."""
    from wire.tcp import build_options  # local import keeps this module free of the engine

    opts = build_options(seg) if (seg.mss is not None or seg.ts is not None or seg.sack_perm
                                  or seg.wscale is not None or seg.sack) else b""
    hlen = 20 + len(opts)
    payload = seg.payload
    total = hlen + len(payload)
    hdr = bytearray(hlen)
    _TCP_HDR.pack_into(hdr, 0, seg.sport, seg.dport, seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF,
                       ((hlen // 4) << 12) | (seg.flags & 0xFF), seg.window, 0, seg.urg)
    if opts:
        hdr[20:] = opts
    if partial:
        cs = fold(pseudo_ipv4(src, dst, 6, total))
    else:
        s = int.from_bytes(hdr, "big") + pseudo_ipv4(src, dst, 6, total)
        if payload:
            s = ones_sum(payload, s)  # the header is a whole number of words: payload stays aligned
        cs = (~fold(s)) & 0xFFFF
    _U16.pack_into(hdr, 16, cs)
    iph = ipv4.build_ipv4(src, dst, 6, total, ident=ident)
    if payload:
        return b"".join((eth, iph, hdr, payload))
    return b"".join((eth, iph, hdr))


def rst_for(seg) -> "object":
    """The RST answering ``seg`` for a connection that does not exist (RFC 9293 3.10.7.1,
    CLOSED state); None when ``seg`` is itself a RST."""
    from wire.tcp import ACK, RST, Segment

    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return Segment(seg.dport, seg.sport, seg.ack, 0, RST, 0)
    return Segment(seg.dport, seg.sport, 0, (seg.seq + seg.seg_len) & 0xFFFFFFFF, RST | ACK, 0)
