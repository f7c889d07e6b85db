"""Out-of-order receive queue: non-overlapping data pieces keyed by unbounded sequence number.

The connection only inserts data inside its advertised window, so memory stays bounded by the
receive buffer. Overlaps keep the bytes already held (first copy wins).
"""
from __future__ import annotations

from bisect import bisect_left

from .sack import RangeSet


class Reassembly:
    __slots__ = ("_starts", "_chunks", "ranges", "nbytes")

    def __init__(self):
        self._starts: list[int] = []
        self._chunks: list[bytes] = []
        self.ranges = RangeSet()
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self._starts)

    def add(self, start: int, data) -> int:
        """Store ``data`` (bytes-like) at ``start``; returns the number of new bytes kept."""
        end = start + len(data)
        kept = 0
        for gs, ge in self.ranges.gaps(start, end):
            i = bisect_left(self._starts, gs)
            self._starts.insert(i, gs)
            self._chunks.insert(i, bytes(data[gs - start:ge - start]))
            kept += ge - gs
        self.ranges.add(start, end)
        self.nbytes += kept
        return kept

    def pop_from(self, at: int) -> tuple[list, int]:
        """Remove the data contiguous from ``at``; returns (pieces, new ``at``). Pieces lying
        wholly below ``at`` are discarded."""
        out = []
        starts, chunks = self._starts, self._chunks
        n = 0
        while n < len(starts) and starts[n] <= at:
            s = starts[n]
            d = chunks[n]
            e = s + len(d)
            if e > at:
                out.append(d if s == at else memoryview(d)[at - s:])
                at = e
            self.nbytes -= len(d)
            n += 1
        if n:
            del starts[:n], chunks[:n]
            self.ranges.discard_below(at)
        return out, at

    def clear(self) -> None:
        self._starts.clear()
        self._chunks.clear()
        self.ranges.clear()
        self.nbytes = 0
