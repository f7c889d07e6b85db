"""virtio_net_hdr (the 10-byte header a TAP with IFF_VNET_HDR puts before each frame), checksum
completion for CHECKSUM_PARTIAL frames, and GSO headers for large TCP segments to the guest."""
from __future__ import annotations

import struct

from .checksum import checksum, fold, ones_sum, pseudo_ipv4, pseudo_ipv6
from .ethernet import ETH_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, FrameError

VNET = struct.Struct("<BBHHHH")
VNET_LEN = VNET.size  # 10
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80
PLAIN = bytes(VNET_LEN)
GSO_MTU = 1500  # TCP frames above this go to a TAP as GSO (see _gso_mss)
_U16 = struct.Struct("!H")


def complete_checksum(frame: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a CHECKSUM_PARTIAL frame: the field holds the pseudo-header sum; sum from
    csum_start to the end and store the complemented result."""
    pos = csum_start + csum_offset
    if csum_start >= len(frame) or pos + 2 > len(frame):
        raise FrameError("checksum offsets outside the frame")
    cs = checksum(memoryview(frame)[csum_start:])
    _U16.pack_into(frame, pos, cs)


def decode(buf, keep_partial_tcp4: bool = False):
    """Strip the vnet header from a frame read off a TAP. Returns (frame, partial): a partial
    checksum is completed, except that with ``keep_partial_tcp4`` a TCP/IPv4 frame is handed
    back as is (partial=True), for the bus to carry checksum-partial."""
    if len(buf) < VNET_LEN + ETH_LEN:
        raise FrameError("frame shorter than vnet + ethernet headers")
    flags, _gso, _hl, _gs, cstart, coff = VNET.unpack_from(buf, 0)
    if flags & F_NEEDS_CSUM:
        if keep_partial_tcp4 and is_partial_tcp4(buf, cstart, coff, VNET_LEN):
            return memoryview(buf)[VNET_LEN:], True
        frame = bytearray(memoryview(buf)[VNET_LEN:])
        complete_checksum(frame, cstart, coff)
        return frame, False
    return bytes(memoryview(buf)[VNET_LEN:]), False


def _gso_mss(mtu: int, ip_len: int, tcp_len: int) -> int:
    # Large TCP frames always go as GSO with segments of at most a 1500-byte MTU, even on a
    # jumbo link: the guest then counts them as many segments (tcp_measure_rcv_mss reads
    # gso_size) and ACKs promptly, instead of delaying ACKs for "one" 64 KiB segment.
    return min(mtu, GSO_MTU) - ip_len - tcp_len


def encode_header(frame, mtu: int) -> bytes:
    """The vnet header for writing ``frame`` to a TAP. TCP frames larger than a 1500-byte MTU
    get a GSO header (the guest kernel takes them as one large receive); other frames must
    fit the link MTU."""
    n = len(frame)
    if n <= GSO_MTU + ETH_LEN:
        return PLAIN
    (etype,) = _U16.unpack_from(frame, 12)
    if etype == ETHERTYPE_IPV4 and frame[ETH_LEN + 9] == 6:
        ihl = (frame[ETH_LEN] & 15) * 4
        l4 = ETH_LEN + ihl
        thl = (frame[l4 + 12] >> 4) * 4
        return VNET.pack(F_DATA_VALID, GSO_TCPV4, l4 + thl, _gso_mss(mtu, ihl, thl), 0, 0)
    if etype == ETHERTYPE_IPV6 and frame[ETH_LEN + 6] == 6:
        l4 = ETH_LEN + 40
        thl = (frame[l4 + 12] >> 4) * 4
        return VNET.pack(F_DATA_VALID, GSO_TCPV6, l4 + thl, _gso_mss(mtu, 40, thl), 0, 0)
    if n <= mtu + ETH_LEN:
        return PLAIN
    raise FrameError("oversized frame that is not TCP")


def gso_checksum_field(frame: bytearray) -> None:
    """Replace a full TCP checksum by the pseudo-header sum (for NEEDS_CSUM GSO frames)."""
    (etype,) = _U16.unpack_from(frame, 12)
    if etype == ETHERTYPE_IPV4:
        ihl = (frame[ETH_LEN] & 15) * 4
        l4 = ETH_LEN + ihl
        ps = pseudo_ipv4(frame[ETH_LEN + 12 : ETH_LEN + 16], frame[ETH_LEN + 16 : ETH_LEN + 20], 6, len(frame) - l4)
    else:
        l4 = ETH_LEN + 40
        ps = pseudo_ipv6(frame[ETH_LEN + 8 : ETH_LEN + 24], frame[ETH_LEN + 24 : ETH_LEN + 40], 6, len(frame) - l4)
    _U16.pack_into(frame, l4 + 16, fold(ones_sum(b"", ps)))


def tcp_csum_start(frame) -> int:
    """Offset of the TCP header in an ethernet/IPv4 frame (where a partial checksum starts)."""
    return ETH_LEN + (frame[ETH_LEN] & 15) * 4


def complete_partial(frame) -> bytes:
    """A copy of a checksum-partial TCP/IPv4 frame with its real checksum filled in."""
    out = bytearray(frame)
    complete_checksum(out, tcp_csum_start(out), 16)
    return bytes(out)


def is_partial_tcp4(buf, csum_start: int, csum_offset: int, base: int = 0) -> bool:
    """True when a NEEDS_CSUM frame at ``buf[base:]`` is TCP over IPv4 with the checksum where
    TCP keeps it (the case the bus carries as checksum-partial)."""
    if len(buf) < base + ETH_LEN + 20 or buf[base + 12] != 0x08 or buf[base + 13] != 0x00:
        return False
    if buf[base + ETH_LEN + 9] != 6 or csum_offset != 16:
        return False
    return csum_start == ETH_LEN + (buf[base + ETH_LEN] & 15) * 4


def encode_header_partial(frame, mtu: int) -> bytes:
    """The vnet header for a checksum-partial TCP/IPv4 frame: NEEDS_CSUM, GSO when large."""
    start = tcp_csum_start(frame)
    if len(frame) <= GSO_MTU + ETH_LEN:
        return VNET.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, 16)
    thl = (frame[start + 12] >> 4) * 4
    return VNET.pack(F_NEEDS_CSUM, GSO_TCPV4, start + thl, _gso_mss(mtu, start - ETH_LEN, thl), start, 16)
