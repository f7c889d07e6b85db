"""NewReno congestion control (RFC 5681, RFC 6582) with byte counting (RFC 3465).

All sequence numbers passed in are unbounded integers (the connection unwraps them), so plain
comparisons are safe here. The connection decides what is a duplicate ACK (RFC 5681 section 2)
and calls :meth:`on_dupack`; everything else that advances SND.UNA goes to :meth:`on_ack`.
"""
from __future__ import annotations


class NewReno:
    __slots__ = ("mss", "cwnd", "ssthresh", "in_recovery", "recover", "dupacks", "_acc",
                 "dupthresh", "max_cwnd", "recoveries")

    def __init__(self, mss: int, *, initial_window: int | None = None, dupthresh: int = 3,
                 max_cwnd: int = 1 << 30):
        self.mss = mss
        # RFC 6928: IW = 10 segments (the link is local, so be generous)
        self.cwnd = initial_window if initial_window is not None else 10 * mss
        self.ssthresh = max_cwnd
        self.in_recovery = False
        self.recover: int | None = None
        self.dupacks = 0
        self._acc = 0
        self.dupthresh = dupthresh
        self.max_cwnd = max_cwnd
        self.recoveries = 0

    def on_ack(self, ack: int, acked: int, flight: int) -> bool:
        """SND.UNA advanced by ``acked`` bytes to ``ack``; ``flight`` is what is still
        outstanding afterwards. Returns True on a partial ACK during fast recovery: the caller
        must retransmit the first unacknowledged segment (RFC 6582 step 4)."""
        self.dupacks = 0
        mss = self.mss
        if self.in_recovery:
            if ack >= self.recover:
                # full acknowledgment: deflate (RFC 6582 step 3, option 1)
                self.in_recovery = False
                self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
                self._acc = 0
                return False
            self.cwnd = max(self.cwnd - acked + (mss if acked >= mss else 0), mss)
            return True
        if self.cwnd < self.ssthresh:
            # slow start, byte counting without the per-ACK limit, but not past ssthresh
            self.cwnd = min(self.cwnd + acked, self.ssthresh)
        else:
            self._acc += acked
            if self._acc >= self.cwnd:
                self._acc -= self.cwnd
                self.cwnd += mss
        if self.cwnd > self.max_cwnd:
            self.cwnd = self.max_cwnd
        return False

    def on_dupack(self, ack: int, flight: int, snd_max: int, *, sack_lost: bool = False) -> bool:
        """One duplicate ACK. Returns True when the caller must fast-retransmit now.

        ``sack_lost``: SACK information already shows SND.UNA lost (RFC 6675 IsLost), so
        recovery starts without waiting for DupThresh ACKs (receivers coalesce ACKs), and the
        RFC 6582 ``recover`` guard (meant for SACK-less senders) is skipped."""
        if self.in_recovery:
            self.cwnd += self.mss  # inflation (RFC 5681 step 4)
            return False
        self.dupacks += 1
        if self.dupacks < self.dupthresh and not sack_lost:
            return False
        if not sack_lost and self.recover is not None and ack <= self.recover:
            return False  # RFC 6582 step 2: still covering an older recovery episode
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.recover = snd_max
        self.cwnd = self.ssthresh + 3 * self.mss
        self.in_recovery = True
        self.recoveries += 1
        return True

    def on_timeout(self, flight: int, snd_max: int) -> None:
        """RTO expired (RFC 5681 eq. 4, loss window of one segment; RFC 6582 section 4)."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.in_recovery = False
        self.recover = snd_max
        self.dupacks = 0
        self._acc = 0
