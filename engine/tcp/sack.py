"""Range sets over unbounded sequence numbers, and RFC 2018 SACK block selection.

Used both ways: the receiver's out-of-order data is a :class:`RangeSet` that
:class:`SackReporter` turns into SACK blocks (most recent first, RFC 2018 section 4); the
sender's scoreboard is a :class:`RangeSet` of SACKed ranges.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right


class RangeSet:
    """Disjoint, non-adjacent half-open ranges ``[start, end)`` kept sorted."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges=()):
        self._starts: list[int] = []
        self._ends: list[int] = []
        for s, e in ranges:
            self.add(s, e)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        # first range whose end >= start (touching merges), last range whose start <= end
        i = bisect_left(ends, start)
        j = bisect_right(starts, end)
        if i < j:
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]

    def discard_below(self, x: int) -> None:
        """Remove everything below ``x``."""
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, x)
        if i:
            del starts[:i], ends[:i]
        if starts and starts[0] < x:
            starts[0] = x

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()

    def find(self, x: int) -> tuple[int, int] | None:
        """The range containing ``x``, if any."""
        i = bisect_right(self._starts, x) - 1
        if i >= 0 and x < self._ends[i]:
            return self._starts[i], self._ends[i]
        return None

    def next_gap(self, x: int) -> tuple[int, int | None]:
        """``(g, e)``: the first uncovered point ``g >= x`` and the start ``e`` of the next
        range after it (``None`` when nothing is above)."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, x) - 1
        if i >= 0 and x < ends[i]:
            x = ends[i]
        k = bisect_right(starts, x)
        return x, (starts[k] if k < len(starts) else None)

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not covered."""
        out = []
        x = start
        while x < end:
            g, nxt = self.next_gap(x)
            if g >= end:
                break
            stop = end if nxt is None else min(nxt, end)
            out.append((g, stop))
            x = stop
        return out

    @property
    def max_end(self) -> int | None:
        return self._ends[-1] if self._ends else None

    @property
    def min_start(self) -> int | None:
        return self._starts[0] if self._starts else None

    def total(self) -> int:
        return sum(self._ends) - sum(self._starts)

    def __iter__(self):
        return iter(zip(self._starts, self._ends))

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"


class SackReporter:
    """Chooses SACK blocks: the block holding the most recently received segment first, then
    the blocks reported most recently, then any others (RFC 2018 section 4)."""

    __slots__ = ("_recent",)

    def __init__(self):
        self._recent: list[int] = []

    def on_segment(self, seq: int) -> None:
        r = self._recent
        if seq in r:
            r.remove(seq)
        r.insert(0, seq)
        del r[4:]

    def clear(self) -> None:
        self._recent.clear()

    def blocks(self, ranges: RangeSet, limit: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        if not ranges or limit <= 0:
            return out
        for s in self._recent:
            r = ranges.find(s)
            if r is not None and r not in out:
                out.append(r)
                if len(out) >= limit:
                    return out
        for r in ranges:
            if r not in out:
                out.append(r)
                if len(out) >= limit:
                    break
        return out
