"""Retransmission timeout estimation (RFC 6298) with exponential backoff."""
from __future__ import annotations


class RttEstimator:
    """SRTT/RTTVAR smoothing per RFC 6298 section 2; ``rto`` includes the current backoff.

    ``min_rto`` defaults to 200 ms (below the RFC's 1 s: fine on a virtual LAN, as Linux does).
    """

    __slots__ = ("srtt", "rttvar", "min_rto", "max_rto", "granularity", "backoff", "_base",
                 "samples")

    K = 4
    ALPHA = 1 / 8
    BETA = 1 / 4

    def __init__(self, *, initial: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0,
                 granularity: float = 0.001):
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.backoff = 0
        self._base = initial
        self.samples = 0

    def on_sample(self, r: float) -> None:
        """Feed one RTT measurement in seconds (never from a retransmitted segment, Karn)."""
        if r < 0:
            return
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = (1 - self.BETA) * self.rttvar + self.BETA * abs(self.srtt - r)
            self.srtt = (1 - self.ALPHA) * self.srtt + self.ALPHA * r
        self.samples += 1
        base = self.srtt + max(self.granularity, self.K * self.rttvar)
        self._base = min(max(base, self.min_rto), self.max_rto)

    @property
    def base(self) -> float:
        """RTO without backoff."""
        return self._base

    @property
    def rto(self) -> float:
        return min(self._base * (1 << self.backoff), self.max_rto)

    def on_timeout(self) -> None:
        """RFC 6298 (5.5): back the timer off."""
        if self.backoff < 30:
            self.backoff += 1

    def reset_backoff(self) -> None:
        self.backoff = 0
