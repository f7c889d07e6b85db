"""Initial sequence numbers per RFC 6528: ISN = M + F(4-tuple, secret), M a 4 microsecond
clock, F a keyed hash (BLAKE2b here)."""
from __future__ import annotations

import hashlib
import os

from .seq import MASK


class IsnGenerator:
    """``gen(src, sport, dst, dport, now) -> int``; ``src``/``dst`` are address bytes (or any
    bytes-like identity), ``now`` monotonic seconds. Reuse one generator (one secret) per
    process so ISNs for one 4-tuple keep increasing."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes | None = None):
        self._key = (secret if secret is not None else os.urandom(32))[:64]

    def __call__(self, src: bytes, sport: int, dst: bytes, dport: int, now: float) -> int:
        h = hashlib.blake2b(digest_size=4, key=self._key)
        h.update(bytes(src))
        h.update(sport.to_bytes(2, "big"))
        h.update(bytes(dst))
        h.update(dport.to_bytes(2, "big"))
        m = int(now * 250_000)
        return (m + int.from_bytes(h.digest(), "big")) & MASK
