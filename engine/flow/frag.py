"""IPv4 reassembly (RFC 791, RFC 815 hole list kept as sorted pieces) with hard bounds.

``Reassembler.add(frame, ip, now)`` takes one fragment (ethernet frame + its parsed IPv4
header) and returns the whole datagram as a new ethernet frame when the last hole is filled,
else None. Overlapping fragments discard the datagram (RFC 5722's rule, applied to IPv4: no
legitimate sender overlaps). Bounds: ``max_datagrams`` in progress, ``max_bytes`` buffered in
all, ``timeout`` seconds per datagram; the oldest datagram goes when a bound is hit.
"""
from __future__ import annotations

import struct
from collections import OrderedDict

from wire.checksum import checksum
from wire.ethernet import ETH_LEN, FrameError

_U16 = struct.Struct("!H")
MAX_DATAGRAM = 65535


class _Partial:
    __slots__ = ("first", "pieces", "total", "size", "started")

    def __init__(self, now: float):
        self.first = None      # bytes: ethernet + IPv4 header of the fragment at offset 0
        self.pieces: list = []  # sorted [(offset, bytes)]
        self.total = None      # payload length, known once the last fragment arrived
        self.size = 0
        self.started = now


class Reassembler:
    def __init__(self, *, max_datagrams: int = 64, max_bytes: int = 1 << 20, timeout: float = 30.0):
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.parts: OrderedDict = OrderedDict()
        self.bytes = 0
        self.counters = {"expired": 0, "evicted": 0, "overlap": 0, "reassembled": 0}

    def _drop(self, key, why: str) -> None:
        p = self.parts.pop(key, None)
        if p is not None:
            self.bytes -= p.size
            self.counters[why] += 1

    def expire(self, now: float) -> None:
        while self.parts:
            key, p = next(iter(self.parts.items()))
            if now - p.started < self.timeout:
                return
            self._drop(key, "expired")

    def add(self, frame, ip, now: float):
        self.expire(now)
        ff = ip.flags_frag
        off = (ff & 0x1FFF) * 8
        more = bool(ff & 0x2000)
        data = bytes(memoryview(frame)[ip.start : ip.end])
        n = len(data)
        if more and n % 8:
            raise FrameError("fragment payload not a multiple of 8")
        if off + n > MAX_DATAGRAM - (ip.start - ETH_LEN):
            raise FrameError("reassembled datagram would exceed 65535 bytes")
        key = (ip.src, ip.dst, ip.ident, ip.proto)
        p = self.parts.get(key)
        if p is None:
            while self.parts and (len(self.parts) >= self.max_datagrams or self.bytes + n > self.max_bytes):
                self._drop(next(iter(self.parts)), "evicted")
            if n > self.max_bytes:
                return None
            p = self.parts[key] = _Partial(now)
        if not more:
            end = off + n
            if p.total is not None and p.total != end:
                self._drop(key, "overlap")
                return None
            if any(o + len(b) > end for o, b in p.pieces):
                self._drop(key, "overlap")
                return None
            p.total = end
        elif p.total is not None and off + n > p.total:
            self._drop(key, "overlap")
            return None
        # insert keeping order; any overlap kills the datagram
        pieces = p.pieces
        i = 0
        while i < len(pieces) and pieces[i][0] < off:
            i += 1
        if (i > 0 and pieces[i - 1][0] + len(pieces[i - 1][1]) > off) or \
                (i < len(pieces) and off + n > pieces[i][0]):
            self._drop(key, "overlap")
            return None
        pieces.insert(i, (off, data))
        p.size += n
        self.bytes += n
        while self.bytes > self.max_bytes and self.parts:
            victim = next(iter(self.parts))
            self._drop(victim, "evicted")
            if victim == key:
                return None
        if off == 0:
            p.first = bytes(memoryview(frame)[: ip.start])
        if p.total is None or p.first is None or p.size != p.total:
            return None
        # complete (no overlaps and size == total means no holes)
        self.parts.pop(key)
        self.bytes -= p.size
        self.counters["reassembled"] += 1
        head = bytearray(p.first)
        ihl = len(head) - ETH_LEN
        _U16.pack_into(head, ETH_LEN + 2, ihl + p.total)
        _U16.pack_into(head, ETH_LEN + 6, 0)
        _U16.pack_into(head, ETH_LEN + 10, 0)
        _U16.pack_into(head, ETH_LEN + 10, checksum(memoryview(head)[ETH_LEN:]))
        return bytes(head) + b"".join(b for _, b in pieces)
