"""Software segmentation: split a TCP super-frame (larger than the link MTU) into MTU-sized
frames, for links without offloads (QEMU stream sockets). IPv4 and IPv6."""
from __future__ import annotations

import struct

from .checksum import checksum, pseudo_ipv4, pseudo_ipv6
from .ethernet import ETH_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, FrameError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
FIN, PSH = 0x01, 0x08


def segment(frame, mtu: int) -> list:
    """Frames no larger than mtu + 14 carrying the same TCP byte stream as ``frame``."""
    if len(frame) <= mtu + ETH_LEN:
        return [frame]
    mv = memoryview(frame)
    (etype,) = _U16.unpack_from(frame, 12)
    if etype == ETHERTYPE_IPV4:
        ihl = (frame[ETH_LEN] & 15) * 4
        if frame[ETH_LEN + 9] != 6:
            raise FrameError("oversized non-TCP IPv4 frame")
        v6 = False
    elif etype == ETHERTYPE_IPV6:
        ihl = 40
        if frame[ETH_LEN + 6] != 6:
            raise FrameError("oversized non-TCP IPv6 frame")
        v6 = True
    else:
        raise FrameError("oversized frame that is not IP")
    l4 = ETH_LEN + ihl
    thl = (frame[l4 + 12] >> 4) * 4
    hdr_end = l4 + thl
    if hdr_end > len(frame):
        raise FrameError("truncated TCP header in super-frame")
    mss = mtu - ihl - thl
    if mss <= 0:
        raise FrameError("MTU too small for headers")
    payload = mv[hdr_end:]
    (seq,) = _U32.unpack_from(frame, l4 + 4)
    flags = frame[l4 + 13]
    ident = 0 if v6 else _U16.unpack_from(frame, ETH_LEN + 4)[0]
    src = bytes(mv[ETH_LEN + (8 if v6 else 12) : ETH_LEN + (24 if v6 else 16)])
    dst = bytes(mv[ETH_LEN + (24 if v6 else 16) : ETH_LEN + (40 if v6 else 20)])
    template = bytearray(mv[:hdr_end])
    out = []
    total = len(payload)
    off = 0
    while off < total:
        chunk = payload[off : off + mss]
        last = off + len(chunk) >= total
        hdr = bytearray(template)
        _U32.pack_into(hdr, l4 + 4, (seq + off) & 0xFFFFFFFF)
        hdr[l4 + 13] = flags if last else flags & ~(FIN | PSH)
        tcp_len = thl + len(chunk)
        if v6:
            _U16.pack_into(hdr, ETH_LEN + 4, tcp_len)
            ps = pseudo_ipv6(src, dst, 6, tcp_len)
        else:
            _U16.pack_into(hdr, ETH_LEN + 2, ihl + tcp_len)
            _U16.pack_into(hdr, ETH_LEN + 4, (ident + len(out)) & 0xFFFF)
            _U16.pack_into(hdr, ETH_LEN + 10, 0)
            _U16.pack_into(hdr, ETH_LEN + 10, checksum(memoryview(hdr)[ETH_LEN:l4]))
            ps = pseudo_ipv4(src, dst, 6, tcp_len)
        _U16.pack_into(hdr, l4 + 16, 0)
        seg = hdr + chunk
        _U16.pack_into(seg, l4 + 16, checksum(memoryview(seg)[l4:], ps))
        out.append(bytes(seg))
        off += len(chunk)
    return out
