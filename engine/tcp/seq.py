"""Sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4, RFC 1982 style).

Comparisons are only meaningful for numbers less than 2**31 apart; at exactly 2**31 both
``seq_lt(a, b)`` and ``seq_lt(b, a)`` hold. The connection keeps its own counters as unbounded
integers (``unwrap``) and uses these helpers at the wire boundary.
"""
from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32 (``n`` may be negative)."""
    return (a + n) & MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` in [-2**31, 2**31)."""
    return ((a - b + HALF) & MASK) - HALF


def seq_lt(a: int, b: int) -> bool:
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    return seq_diff(a, b) > 0


def seq_ge(a: int, b: int) -> bool:
    return seq_diff(a, b) >= 0


def seq_max(a: int, b: int) -> int:
    return a if seq_ge(a, b) else b


def seq_min(a: int, b: int) -> int:
    return a if seq_le(a, b) else b


def in_window(x: int, left: int, size: int) -> bool:
    """``left <= x < left + size`` in sequence space (``size`` < 2**31)."""
    return ((x - left) & MASK) < size


def unwrap(x: int, ref: int) -> int:
    """The unbounded integer congruent to the 32-bit ``x`` that is nearest the unbounded
    reference ``ref`` (within 2**31)."""
    return ref + seq_diff(x, ref & MASK)
