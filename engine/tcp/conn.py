"""One TCP endpoint as a sans-I/O state machine (RFC 9293).

Theory of operation
-------------------
The connection is a pure object. The adapter feeds it decoded segments and the time
(``on_segment(seg, now)``), application data (``send``/``recv``/``close``/``abort``) and timer
expiries (``on_timer(now)`` at ``timer()``); after each call it drains ``segments_out(now)``
(segments to transmit, ports filled in, ready for ``wire.tcp.build_tcp``) and ``events()``.

Sequence numbers: on the wire they are 32-bit; inside, every counter (``snd_una``,
``snd_nxt``, ``snd_max``, ``rcv_nxt``, the reassembly queue, the SACK scoreboard) is an
unbounded integer that starts at the 32-bit ISN. Incoming numbers are unwrapped against the
nearest counter with ``seq.unwrap`` and outgoing ones masked, so comparisons inside are plain
integer comparisons and are correct across the 2**32 wrap.

States (LISTEN is the flow service's job: it builds a passive connection from a SYN)::

    passive(SYN) -> SYN_RECEIVED --accept()--> (SYN-ACK sent) --ACK--> ESTABLISHED
                               \\--refuse()--> CLOSED (RST returned)
    active()     -> SYN_SENT --SYN-ACK--> ESTABLISHED        (SYN -> SYN_RECEIVED: simultaneous)
    ESTABLISHED --close()--> FIN_WAIT_1 --ACK of FIN--> FIN_WAIT_2 --FIN--> TIME_WAIT
                                       \\--FIN--> CLOSING --ACK of FIN--> TIME_WAIT
    ESTABLISHED --FIN--> CLOSE_WAIT --close()--> LAST_ACK --ACK of FIN--> CLOSED
    TIME_WAIT --2*MSL--> CLOSED;   any state --RST/abort()/retransmission timeout--> CLOSED

Sending: the send buffer is one ``bytearray`` holding unacknowledged and unsent data (the FIN,
once queued, sits right after the last byte). ``segments_out`` cuts it into segments of up to
``max_segment`` bytes within min(peer window, cwnd). Loss recovery: RTO (RFC 6298, go-back-N
from SND.UNA after a timeout), fast retransmit and NewReno fast recovery (RFC 5681/6582); with
SACK (RFC 2018) the holes below the highest SACKed byte are retransmitted during recovery, one
per duplicate ACK. A zero peer window is probed (persist timer, exponential backoff) with an
out-of-window ACK (seq = SND.UNA - 1), which makes the peer answer with its current window.

Receiving: in-order data goes to a ``bytearray`` the adapter drains with ``recv``; the window
advertised is what is free of ``rcv_buf`` (never shrinking, SWS-avoiding), so the application
reading slowly throttles the peer (end-to-end flow control). Out-of-order data within the
window is kept in a reassembly queue and reported in SACK blocks. ACKs are sent at once for
out-of-order data, gap fills, PSH, FIN and every two full segments, else after ``delayed_ack``.

RST handling follows RFC 5961: an RST is honoured only if its sequence number is exactly
RCV.NXT; an in-window one gets a challenge ACK; SYNs in synchronized states get a challenge ACK.
Timestamps give RTT samples and PAWS (without the 24-day idle rule).

Errors: misuse by our own code (``send`` after ``close``, ``accept`` twice) raises
:class:`TcpStateError`; bad segments from the peer are dropped and counted in ``stats.drops``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from wire.tcp import ACK, FIN, PSH, RST, SYN, Segment

from .congestion import NewReno
from .events import Closed, Connected, DataReadable, EndOfStream, Reset, SendSpace
from .reassembly import Reassembly
from .rto import RttEstimator
from .sack import RangeSet, SackReporter
from .seq import HALF, MASK, seq_add, seq_ge, seq_lt, unwrap
from .sendbuf import SendBuffer


class TcpStateError(RuntimeError):
    """Local misuse of a connection (our bug, not the peer's)."""


class State(enum.Enum):
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"
    CLOSED = "CLOSED"


S = State
_RECEIVING = frozenset((S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2))
_CAN_SEND = frozenset((S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT))
_SYNCHRONIZED = frozenset((S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING,
                           S.LAST_ACK, S.TIME_WAIT))


@dataclass(slots=True)
class TcpConfig:
    """Tunables; the defaults suit a user-space endpoint on a local virtual link."""
    msl: float = 1.0               # TIME_WAIT lasts 2*msl
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    max_retries: int = 15          # consecutive RTO expiries before giving up (Linux retries2)
    syn_retries: int = 6           # for SYN / SYN-ACK
    delayed_ack: float = 0.04      # 0 disables delayed ACKs
    initial_window: int = 10       # segments (RFC 6928)
    persist_max: float = 60.0      # cap of the zero-window probe interval
    timestamps: bool = True
    sack: bool = True
    window_scaling: bool = True


class TcpStats:
    """Counters for observability (plain attributes; ``drops`` maps reason -> count)."""

    __slots__ = ("segments_in", "segments_out", "bytes_in", "bytes_out", "bytes_acked",
                 "retransmits", "fast_retransmits", "timeouts", "dupacks_in", "ooo_segments",
                 "challenge_acks", "window_probes", "keepalive_probes", "drops")

    def __init__(self):
        for k in self.__slots__:
            setattr(self, k, 0)
        self.drops: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v := getattr(self, k), dict) else v)
                for k in self.__slots__}


def _pick_wscale(rcv_buf: int) -> int:
    ws = 0
    while (rcv_buf >> ws) > 0xFFFF and ws < 14:
        ws += 1
    return ws


class TcpConnection:
    """One TCP endpoint. Build with :meth:`passive` or :meth:`active`."""

    def __init__(self, *, local_port: int, remote_port: int, now: float, isn: int,
                 mss: int = 1460, max_segment: int | None = None, rcv_buf: int = 256 * 1024,
                 snd_buf: int = 256 * 1024, config: TcpConfig | None = None):
        cfg = self.config = config or TcpConfig()
        self.local_port = local_port
        self.remote_port = remote_port
        self.state = S.CLOSED
        self.mss = mss                    # what we advertise
        self.max_segment = max_segment    # output payload cap (TSO); None = send MSS
        self.rcv_buf = rcv_buf
        self.snd_buf = snd_buf
        self.stats = TcpStats()
        self._now = now
        # --- send side (unbounded sequence numbers) ---
        self.iss = isn & MASK
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._sbuf = SendBuffer()
        self._sdata = self.iss + 1        # sequence number of the first byte held in _sbuf
        self.peer_mss = 536
        self._snd_wscale = 0
        self._rcv_wscale = _pick_wscale(rcv_buf) if cfg.window_scaling else 0
        self._ws_ok = False
        self._ts_ok = False
        self._sack_ok = False
        self._ts_recent = 0
        self._ts_offset = (self.iss * 2654435761) & MASK
        self.rtt = RttEstimator(initial=cfg.initial_rto, min_rto=cfg.min_rto,
                                max_rto=cfg.max_rto)
        self.cc: NewReno | None = None
        self._sacked = RangeSet()
        self._rexmit_pending = False
        self._rexmit_hi = 0
        self._hole_credit = 0
        self._probe_pending = False
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._retries = 0
        # --- receive side ---
        self.irs = 0
        self.rcv_nxt = 0
        self._rbuf = bytearray()
        self._roff = 0
        self._rcv_adv = 0                 # right edge of the window we advertised
        self._last_ack_sent = 0
        self._reasm = Reassembly()
        self._sack_rep = SackReporter()
        self._ooo_fin: int | None = None
        self._ack_now = False
        self._unacked = 0
        # --- control ---
        self._syn_pending = False
        self._accepted = False
        self._close_requested = False
        self._fin_queued = False
        self._peer_fin = False
        self._rto_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._persist_backoff = 0
        self._dack_deadline: float | None = None
        self._tw_deadline: float | None = None
        self._ctl_out: list[Segment] = []
        self._events: list = []
        self._ev_readable = False
        self._want_space = False
        self._closed_reported = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def passive(cls, syn: Segment, *, now: float, isn: int, mss: int = 1460,
                max_segment: int | None = None, rcv_buf: int = 256 * 1024,
                snd_buf: int = 256 * 1024, config: TcpConfig | None = None) -> TcpConnection:
        """A connection answering the peer's ``syn``, in SYN_RECEIVED; nothing is sent until
        :meth:`accept` (or :meth:`refuse`). Retransmitted SYNs meanwhile are ignored."""
        if not syn.flags & SYN or syn.flags & (ACK | RST):
            raise TcpStateError("passive() needs a SYN without ACK/RST")
        c = cls(local_port=syn.dport, remote_port=syn.sport, now=now, isn=isn, mss=mss,
                max_segment=max_segment, rcv_buf=rcv_buf, snd_buf=snd_buf, config=config)
        c.state = S.SYN_RECEIVED
        c._take_syn_options(syn, passive=True)
        c.snd_wnd = syn.window
        c._snd_wl1 = c.irs
        c._snd_wl2 = c.iss
        return c

    @classmethod
    def active(cls, *, local_port: int, remote_port: int, now: float, isn: int,
               mss: int = 1460, max_segment: int | None = None, rcv_buf: int = 256 * 1024,
               snd_buf: int = 256 * 1024, config: TcpConfig | None = None) -> TcpConnection:
        """A connection in SYN_SENT with its SYN queued for ``segments_out``."""
        c = cls(local_port=local_port, remote_port=remote_port, now=now, isn=isn, mss=mss,
                max_segment=max_segment, rcv_buf=rcv_buf, snd_buf=snd_buf, config=config)
        c.state = S.SYN_SENT
        c._syn_pending = True
        return c

    def _take_syn_options(self, syn: Segment, *, passive: bool) -> None:
        cfg = self.config
        self.irs = syn.seq
        self.rcv_nxt = self.irs + 1
        self._last_ack_sent = self.rcv_nxt
        self.peer_mss = max(syn.mss, 64) if syn.mss else 536
        self._ws_ok = cfg.window_scaling and syn.wscale is not None
        if self._ws_ok:
            self._snd_wscale = min(syn.wscale, 14)
        else:
            self._snd_wscale = 0
            self._rcv_wscale = 0
        self._ts_ok = cfg.timestamps and syn.ts is not None
        if self._ts_ok:
            self._ts_recent = syn.ts[0]
        self._sack_ok = cfg.sack and syn.sack_perm
        if not passive:
            self._rcv_adv = self.rcv_nxt + min(self.rcv_buf, 0xFFFF)

    def accept(self, now: float) -> None:
        """The host side connected: queue the SYN-ACK."""
        if self.state is not S.SYN_RECEIVED or self._accepted:
            raise TcpStateError(f"accept() in {self.state.name}")
        self._now = now
        self._accepted = True
        self._syn_pending = True

    def refuse(self) -> Segment:
        """The host side refused: return the RST answering the SYN and go CLOSED."""
        if self.state is not S.SYN_RECEIVED or self._accepted:
            raise TcpStateError(f"refuse() in {self.state.name}")
        rst = Segment(self.local_port, self.remote_port, 0, self.rcv_nxt & MASK, RST | ACK, 0)
        self._enter_closed()
        return rst

    # ------------------------------------------------------------------ properties

    @property
    def _smss(self) -> int:
        """Payload bytes per wire segment: min(peer MSS, our MSS) minus the timestamp
        option (RFC 6691)."""
        mss = self.peer_mss if self.peer_mss < self.mss else self.mss
        return max(mss - (12 if self._ts_ok else 0), 32)

    @property
    def send_mss(self) -> int:
        """Payload bytes per wire segment; what a TSO adapter should use as gso_size."""
        return self._smss

    @property
    def _snd_end(self) -> int:
        return self._sdata + len(self._sbuf)

    def send_space(self) -> int:
        return max(self.snd_buf - len(self._sbuf), 0)

    def readable(self) -> int:
        return len(self._rbuf) - self._roff

    @property
    def peer_closed(self) -> bool:
        """The peer's FIN was received."""
        return self._peer_fin

    def __repr__(self) -> str:
        return (f"<TcpConnection {self.local_port}->{self.remote_port} {self.state.name} "
                f"una={self.snd_una & MASK} nxt={self.snd_nxt & MASK} "
                f"rcv_nxt={self.rcv_nxt & MASK}>")

    # ------------------------------------------------------------------ application API

    def send(self, data) -> int:
        """Queue up to ``send_space()`` bytes of ``data``; returns how many were taken. When
        not everything fits, a ``SendSpace`` event follows once acknowledgments free room."""
        if self._close_requested or self.state not in _CAN_SEND:
            raise TcpStateError(f"send() in {self.state.name}"
                                + (" after close()" if self._close_requested else ""))
        n = len(data)
        space = self.send_space()
        if n > space:
            self._want_space = True
            n = space
        if n:
            self._sbuf.append(memoryview(data)[:n] if n < len(data) else data)
        return n

    def recv(self, max_bytes: int | None = None) -> bytes:
        """Consume up to ``max_bytes`` of in-order received data (opens the window)."""
        avail = len(self._rbuf) - self._roff
        n = avail if max_bytes is None else max(min(max_bytes, avail), 0)
        if n == 0:
            return b""
        if self._roff == 0 and n == avail:
            data = bytes(self._rbuf)
            self._rbuf.clear()
        else:
            data = bytes(memoryview(self._rbuf)[self._roff:self._roff + n])
            self._roff += n
            if self._roff == len(self._rbuf):
                self._rbuf.clear()
                self._roff = 0
            elif self._roff > 65536 and self._roff * 2 > len(self._rbuf):
                del self._rbuf[:self._roff]
                self._roff = 0
        if self.state in _RECEIVING and self._window_update_due():
            self._ack_now = True
        return data

    def close(self) -> None:
        """Send FIN after all queued data (half-close: we may still receive)."""
        st = self.state
        if self._close_requested or st is S.CLOSED:
            return
        self._close_requested = True
        if st is S.SYN_SENT:
            self._enter_closed()
        elif st is S.SYN_RECEIVED:
            if not self._accepted:
                self._ctl_out.append(Segment(self.local_port, self.remote_port, 0,
                                             self.rcv_nxt & MASK, RST | ACK, 0))
                self._enter_closed()
            # else: FIN goes out once established
        elif st is S.ESTABLISHED:
            self._fin_queued = True
            self.state = S.FIN_WAIT_1
        elif st is S.CLOSE_WAIT:
            self._fin_queued = True
            self.state = S.LAST_ACK

    def abort(self) -> Segment | None:
        """Drop the connection; returns the RST to send to the peer (if any)."""
        st = self.state
        if st is S.CLOSED:
            return None
        if st is S.SYN_RECEIVED and not self._accepted:
            return self.refuse()
        rst = None
        if st is not S.SYN_SENT:
            rst = self._make_rst()
        self._enter_closed()
        return rst

    def events(self) -> list:
        ev = self._events
        self._events = []
        self._ev_readable = False
        return ev

    # ------------------------------------------------------------------ timers

    def timer(self) -> float | None:
        """The next deadline at which ``on_timer`` must be called, or None."""
        t = None
        for d in (self._rto_deadline, self._persist_deadline, self._dack_deadline,
                  self._tw_deadline):
            if d is not None and (t is None or d < t):
                t = d
        return t

    def on_timer(self, now: float) -> None:
        self._now = now
        if self._tw_deadline is not None and now >= self._tw_deadline:
            self._enter_closed()
            return
        if self._dack_deadline is not None and now >= self._dack_deadline:
            self._dack_deadline = None
            self._ack_now = True
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_rto(now)
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._persist_deadline = None
            self._probe_pending = True
            self._persist_backoff += 1

    def _on_rto(self, now: float) -> None:
        self._rto_deadline = None
        if self.snd_una >= self.snd_max:
            return
        handshake = self.state in (S.SYN_SENT, S.SYN_RECEIVED)
        if not handshake and self.snd_wnd == 0:
            # the peer closed its window with data outstanding: probe, don't count a retry
            self._probe_pending = True
            self.rtt.on_timeout()
            self._rto_deadline = now + self.rtt.rto
            return
        self._retries += 1
        limit = self.config.syn_retries if handshake else self.config.max_retries
        if self._retries > limit:
            if self.state is not S.SYN_SENT:
                self._ctl_out.append(self._make_rst())
            self._abort_with(Reset("timeout"))
            return
        self.stats.timeouts += 1
        self.rtt.on_timeout()
        self._rtt_seq = None
        if handshake:
            self._syn_pending = True
        else:
            self.cc.on_timeout(self.snd_max - self.snd_una, self.snd_max)
            self.snd_nxt = self.snd_una
            self._sacked.clear()
            self._rexmit_pending = False
            self._hole_credit = 0
            self._rexmit_hi = self.snd_una
        self._rto_deadline = now + self.rtt.rto

    # ------------------------------------------------------------------ input

    def on_segment(self, seg: Segment, now: float) -> None:
        """Process one segment addressed to this connection."""
        self._now = now
        self.stats.segments_in += 1
        st = self.state
        if st is S.CLOSED:
            self.stats.drop("closed")
            return
        if st is S.SYN_SENT:
            self._on_segment_syn_sent(seg, now)
            return
        flags = seg.flags
        if st is S.SYN_RECEIVED and not self._accepted:
            # the host connect() is pending: only a RST for the SYN matters
            if flags & RST and seg.seq == self.rcv_nxt & MASK:
                self._abort_with(Reset("reset"))
            else:
                self.stats.drop("not_accepted")
            return

        seq = unwrap(seg.seq, self.rcv_nxt)
        plen = len(seg.payload)
        rcv_nxt = self.rcv_nxt
        wnd_end = self._rcv_adv if self._rcv_adv > rcv_nxt else rcv_nxt

        # PAWS (RFC 7323 section 5), without the idle-connection rule
        if (self._ts_ok and seg.ts is not None and not flags & RST
                and seq_lt(seg.ts[0], self._ts_recent)):
            self.stats.drop("paws")
            self._ack_now = True
            return

        # RST (RFC 5961 section 3)
        if flags & RST:
            if seq == rcv_nxt:
                if st is S.TIME_WAIT:
                    self._enter_closed()
                else:
                    self._abort_with(Reset("reset"))
            elif rcv_nxt < seq < wnd_end:
                self._challenge_ack()
            else:
                self.stats.drop("rst_out_of_window")
            return

        # SYN in a synchronized state (RFC 5961 section 4), or a retransmitted SYN
        if flags & SYN:
            if st is S.SYN_RECEIVED and seq == self.irs and not flags & ACK:
                self._syn_pending = True   # our SYN-ACK was lost: resend it
            else:
                self._challenge_ack()
            return

        # acceptability (RFC 9293 3.10.7.4, with Linux's allowance for seq == right edge so
        # zero-window probes and ACKs are processed)
        seg_len = plen + (flags & FIN)
        if seq > wnd_end or seq + seg_len < rcv_nxt or (seg_len == 0 and seq < rcv_nxt):
            if seq == rcv_nxt - 1 and plen <= 1 and not flags & FIN:
                self.stats.keepalive_probes += 1  # the peer's keepalive: answered by the ACK
            else:
                self.stats.drop("out_of_window")
            self._ack_now = True
            return
        if not flags & ACK:
            self.stats.drop("no_ack")
            return

        # RFC 7323 TS.Recent update
        if (self._ts_ok and seg.ts is not None and seq <= self._last_ack_sent
                and seq_ge(seg.ts[0], self._ts_recent)):
            self._ts_recent = seg.ts[0]

        ack = unwrap(seg.ack, self.snd_una)
        if st is S.SYN_RECEIVED:
            if self.snd_una < ack <= self.snd_max:
                self._snd_wl1 = seq - 1   # force the window update below
                self._establish(seg, now)
                st = self.state
            else:
                self._ctl_out.append(Segment(self.local_port, self.remote_port, seg.ack, 0,
                                             RST, 0))
                self.stats.drop("bad_ack")
                return
        if ack > self.snd_max:
            self.stats.drop("ack_unsent")
            self._ack_now = True
            return
        if ack < self.snd_una - max(self.max_snd_wnd, 1):
            self.stats.drop("ack_too_old")
            self._challenge_ack()
            return
        self._process_ack(seg, seq, ack, plen, now)
        if self.state is S.CLOSED:
            return
        if plen or flags & FIN:
            self._process_data(seg, seq, now)

    def _on_segment_syn_sent(self, seg: Segment, now: float) -> None:
        f = seg.flags
        if f & ACK and seg.ack != seq_add(self.iss, 1):
            if not f & RST:
                self._ctl_out.append(Segment(self.local_port, self.remote_port, seg.ack, 0,
                                             RST, 0))
            self.stats.drop("bad_ack")
            return
        if f & RST:
            if f & ACK:
                self._abort_with(Reset("refused"))
            else:
                self.stats.drop("rst_no_ack")
            return
        if not f & SYN:
            self.stats.drop("no_syn")
            return
        self._take_syn_options(seg, passive=False)
        self.snd_wnd = seg.window             # never scaled in a SYN
        self.max_snd_wnd = self.snd_wnd
        self._snd_wl1 = self.irs
        if f & ACK:
            self._snd_wl2 = self.iss + 1
            self._rtt_from_ack(seg, self.iss + 1, now)
            self.snd_una = self.iss + 1
            self._rto_deadline = None
            self._retries = 0
            self.rtt.reset_backoff()
            self._establish(seg, now, synack_rtt=False)
            self._ack_now = True
        else:
            # simultaneous open: answer with SYN-ACK
            self._snd_wl2 = self.iss
            self.state = S.SYN_RECEIVED
            self._accepted = True
            self._syn_pending = True
            self._rcv_adv = 0

    def _establish(self, seg: Segment, now: float, synack_rtt: bool = True) -> None:
        if synack_rtt:
            self._rtt_from_ack(seg, self.iss + 1, now)
            self.snd_una = self.iss + 1
            if self.snd_nxt < self.snd_una:
                self.snd_nxt = self.snd_una
            self._rto_deadline = None
            self._retries = 0
            self.rtt.reset_backoff()
        smss = self._smss
        self.cc = NewReno(smss, initial_window=self.config.initial_window * smss)
        self._rexmit_hi = self.snd_una
        self.state = S.ESTABLISHED
        self._events.append(Connected())
        if self._close_requested:
            self._fin_queued = True
            self.state = S.FIN_WAIT_1

    def _rtt_from_ack(self, seg: Segment, ack: int, now: float) -> None:
        if self._ts_ok and seg.ts is not None and seg.ts[1]:
            ms = (self._ts_val(now) - seg.ts[1]) & MASK
            if ms < HALF:
                self.rtt.on_sample(ms / 1000.0)
            self._rtt_seq = None
        elif self._rtt_seq is not None and ack >= self._rtt_seq:
            self.rtt.on_sample(now - self._rtt_time)
            self._rtt_seq = None

    def _process_ack(self, seg: Segment, seq: int, ack: int, plen: int, now: float) -> None:
        old_una = self.snd_una
        wnd = seg.window << self._snd_wscale
        dup = (ack == old_una and plen == 0 and not seg.flags & FIN and wnd == self.snd_wnd
               and self.snd_max > old_una)
        # send window update (RFC 9293 3.10.7.4)
        if self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= ack):
            self.snd_wnd = wnd
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd:
                self._persist_deadline = None
                self._persist_backoff = 0
        # SACK scoreboard; an ACK bringing new SACK information counts as a duplicate ACK
        # even when it carries data or a window change (RFC 6675 spirit)
        if self._sack_ok and seg.sack:
            sacked = self._sacked
            for left, right in seg.sack:
                lo = unwrap(left, old_una)
                hi = unwrap(right, old_una)
                if ack < lo < hi <= self.snd_max:
                    have = sacked.find(lo)
                    if have is None or have[1] < hi:
                        sacked.add(lo, hi)
                        if ack == old_una and self.snd_max > old_una:
                            dup = True
        if ack > old_una:
            self._on_new_ack(seg, ack, now)
        elif dup:
            self.stats.dupacks_in += 1
            # RFC 6675 IsLost(SND.UNA): more than (DupThresh - 1) * SMSS bytes SACKed above it
            lost = bool(self._sacked) and self._sacked.total() > 2 * self._smss
            if self.cc.on_dupack(ack, self.snd_max - self.snd_una, self.snd_max,
                                 sack_lost=lost):
                self.stats.fast_retransmits += 1
                self._rexmit_pending = True
                self._rexmit_hi = self.snd_una
                self._hole_credit = 1
            elif self.cc.in_recovery:
                self._hole_credit += 1

    def _on_new_ack(self, seg: Segment, ack: int, now: float) -> None:
        acked = ack - self.snd_una
        self._rtt_from_ack(seg, ack, now)
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        data_acked = min(ack, self._snd_end) - self._sdata
        if data_acked > 0:
            self._sbuf.consume(data_acked)
            self._sdata += data_acked
            self.stats.bytes_acked += data_acked
            if self._want_space:
                self._want_space = False
                self._events.append(SendSpace())
        self._sacked.discard_below(ack)
        self._retries = 0
        self.rtt.reset_backoff()
        if self.cc.on_ack(ack, acked, self.snd_max - ack):
            # partial ACK in fast recovery: retransmit the next hole unless already done
            if ack >= self._rexmit_hi:
                self._rexmit_pending = True
            self._hole_credit += 1
        if not self.cc.in_recovery:
            self._hole_credit = 0
        self._rto_deadline = None if ack >= self.snd_max else now + self.rtt.rto
        # our FIN acknowledged?
        if self._fin_queued and ack > self._snd_end:
            st = self.state
            if st is S.FIN_WAIT_1:
                self.state = S.FIN_WAIT_2
            elif st is S.CLOSING:
                self._enter_time_wait(now)
            elif st is S.LAST_ACK:
                self._enter_closed()

    def _process_data(self, seg: Segment, seq: int, now: float) -> None:
        st = self.state
        fin = bool(seg.flags & FIN)
        if st not in _RECEIVING:
            # the peer already sent FIN: this can only be a retransmission
            if st is S.TIME_WAIT and fin:
                self._tw_deadline = now + 2 * self.config.msl
            self._ack_now = True
            return
        payload = seg.payload
        plen = len(payload)
        rn = self.rcv_nxt
        if seq < rn:
            d = rn - seq
            if d >= plen:
                if plen:
                    payload = b""
                if d > plen:
                    fin = False
            else:
                payload = payload[d:]
            seq = rn
            self._ack_now = True          # (partly) duplicate: tell the peer at once
        wnd_end = self._rcv_adv if self._rcv_adv > rn else rn
        n = len(payload)
        if seq + n > wnd_end:
            keep = max(wnd_end - seq, 0)
            payload = payload[:keep]
            n = keep
            fin = False
            self.stats.drop("beyond_window")
            self._ack_now = True
        if n == 0 and not fin:
            return
        if seq == rn:
            if n:
                self._rbuf += payload
                rn += n
            if self._reasm:
                pieces, rn = self._reasm.pop_from(rn)
                for p in pieces:
                    self._rbuf += p
                if not self._reasm:
                    self._sack_rep.clear()
                self._ack_now = True      # filled (part of) a gap
            delivered = rn - self.rcv_nxt
            self.rcv_nxt = rn
            if delivered:
                self.stats.bytes_in += delivered
                if not self._ev_readable:
                    self._ev_readable = True
                    self._events.append(DataReadable())
            if fin and seq + n == rn:
                self._on_peer_fin(now)
            elif self._ooo_fin is not None and self._ooo_fin == rn:
                self._on_peer_fin(now)
            elif not self._ack_now:
                self._unacked += n
                if (seg.flags & PSH or self.config.delayed_ack <= 0
                        or self._unacked >= 2 * (self.mss - (12 if self._ts_ok else 0))):
                    self._ack_now = True
                elif self._dack_deadline is None:
                    self._dack_deadline = now + self.config.delayed_ack
        else:
            if n:
                self._reasm.add(seq, payload)
                self._sack_rep.on_segment(seq)
                self.stats.ooo_segments += 1
            if fin:
                self._ooo_fin = seq + n
            self._ack_now = True

    def _on_peer_fin(self, now: float) -> None:
        self.rcv_nxt += 1
        self._peer_fin = True
        self._ooo_fin = None
        self._ack_now = True
        self._events.append(EndOfStream())
        st = self.state
        if st is S.ESTABLISHED:
            self.state = S.CLOSE_WAIT
        elif st is S.FIN_WAIT_1:
            self.state = S.CLOSING
        elif st is S.FIN_WAIT_2:
            self._enter_time_wait(now)

    # ------------------------------------------------------------------ output

    def segments_out(self, now: float) -> list[Segment]:
        """Everything to transmit now (ports filled in). Call after every other method."""
        self._now = now
        out = self._ctl_out
        self._ctl_out = []
        st = self.state
        if st is S.CLOSED:
            self.stats.segments_out += len(out)
            return out
        if self._syn_pending:
            self._syn_pending = False
            out.append(self._make_syn(now))
            if self.snd_max == self.iss:
                self.snd_nxt = self.snd_max = self.iss + 1
                self._rtt_seq = self.iss + 1
                self._rtt_time = now
            else:
                self.stats.retransmits += 1
            if self._rto_deadline is None:
                self._rto_deadline = now + self.rtt.rto
        if st not in _SYNCHRONIZED:
            self.stats.segments_out += len(out)
            return out

        cap = self.max_segment or self._smss
        sack_blocks = self._sack_blocks()
        if sack_blocks:
            cap = min(cap, self._smss - 4 - 8 * len(sack_blocks))
        if self._rexmit_pending:
            self._rexmit_pending = False
            _, nxt_sacked = self._sacked.next_gap(self.snd_una)
            seg = self._retransmit(self.snd_una, nxt_sacked, cap, sack_blocks, now)
            if seg is not None:
                out.append(seg)
        if self._hole_credit > 0 and self._sacked and self.cc.in_recovery:
            self._fill_holes(out, cap, sack_blocks, now)
        self._send_new(out, cap, sack_blocks, now)
        if self._probe_pending:
            self._probe_pending = False
            self.stats.window_probes += 1
            out.append(self._make(self.snd_una - 1, ACK, b"", now, sack_blocks))
        if self._ack_now or (self._dack_deadline is not None and now >= self._dack_deadline):
            out.append(self._make(self.snd_max, ACK, b"", now, sack_blocks))
        if self.snd_max > self.snd_una and self._rto_deadline is None:
            self._rto_deadline = now + self.rtt.rto
        self.stats.segments_out += len(out)
        return out

    def _retransmit(self, seq: int, limit: int | None, cap: int, sack_blocks, now: float):
        end = self._snd_end
        fin_sent = self._fin_queued and self.snd_max > end
        if seq < end:
            n = min(cap, end - seq, self._smss, self.snd_max - seq)
            if n <= 0:
                return None
            if limit is not None and limit > seq:
                n = min(n, limit - seq)
            fin = fin_sent and seq + n == end
            flags = ACK | (FIN if fin else 0) | (PSH if seq + n == end else 0)
            seg = self._make(seq, flags, self._slice(seq, n), now, sack_blocks)
            stop = seq + n + fin
        elif seq == end and fin_sent:
            seg = self._make(seq, ACK | FIN, b"", now, sack_blocks)
            stop = seq + 1
        else:
            return None
        if stop > self._rexmit_hi:
            self._rexmit_hi = stop
        if self._rtt_seq is not None and seq < self._rtt_seq:
            self._rtt_seq = None          # Karn
        self.stats.retransmits += 1
        return seg

    def _fill_holes(self, out: list, cap: int, sack_blocks, now: float) -> None:
        """During recovery, retransmit un-SACKed data below the highest SACKed byte."""
        while self._hole_credit > 0:
            start = max(self.snd_una, self._rexmit_hi)
            gap, nxt = self._sacked.next_gap(start)
            if nxt is None or gap >= self.snd_nxt:
                return
            seg = self._retransmit(gap, nxt, cap, sack_blocks, now)
            if seg is None:
                return
            out.append(seg)
            self._hole_credit -= 1

    def _send_new(self, out: list, cap: int, sack_blocks, now: float) -> None:
        end = self._snd_end
        smss = min(self._smss, cap)  # a "full-sized" segment is also bounded by the output cap
        una = self.snd_una
        cwnd = self.cc.cwnd
        limit = una + (self.snd_wnd if self.snd_wnd < cwnd else cwnd)
        nxt = self.snd_nxt
        while True:
            avail = end - nxt
            if avail > 0:
                n = min(avail, limit - nxt, cap)
                if n <= 0:
                    break
                if n < avail and n < smss and nxt > una:
                    break                 # sender SWS avoidance: wait for ACKs
                last = n == avail
                fin = self._fin_queued and last
                flags = ACK | (PSH if last else 0) | (FIN if fin else 0)
                out.append(self._make(nxt, flags, self._slice(nxt, n), now, sack_blocks))
                if nxt < self.snd_max:
                    self.stats.retransmits += 1
                    if self._rtt_seq is not None and nxt < self._rtt_seq:
                        self._rtt_seq = None
                else:
                    self.stats.bytes_out += n
                    if self._rtt_seq is None and not self._ts_ok:
                        self._rtt_seq = nxt + n
                        self._rtt_time = now
                nxt += n + fin
                if fin:
                    break
            elif avail == 0 and self._fin_queued:
                out.append(self._make(nxt, ACK | FIN, b"", now, sack_blocks))
                if nxt < self.snd_max:
                    self.stats.retransmits += 1
                nxt += 1
                break
            else:
                break
        self.snd_nxt = nxt
        if nxt > self.snd_max:
            self.snd_max = nxt
        # zero window with nothing in flight: arm the persist timer
        if (nxt < end and self.snd_wnd == 0 and self.snd_una == self.snd_max
                and self._persist_deadline is None):
            ivl = min(self.rtt.base * (1 << min(self._persist_backoff, 20)),
                      self.config.persist_max)
            self._persist_deadline = now + ivl

    def _slice(self, seq: int, n: int):
        return self._sbuf.view(seq - self._sdata, n)

    def _ts_val(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & MASK

    def _sack_blocks(self) -> list:
        if not (self._sack_ok and self._reasm):
            return []
        blocks = self._sack_rep.blocks(self._reasm.ranges, 3 if self._ts_ok else 4)
        return [(s & MASK, e & MASK) for s, e in blocks]

    def _adv_window(self) -> int:
        """The raw window field to send now; updates the advertised right edge."""
        ws = self._rcv_wscale
        rn = self.rcv_nxt
        free = self.rcv_buf - (len(self._rbuf) - self._roff)
        if free < 0:
            free = 0
        target = rn + min(free, 0xFFFF << ws)
        if target < self._rcv_adv + min(self.rcv_buf // 2, self.mss):
            # never shrink, and don't advertise small increases (receiver SWS avoidance)
            wnd = max(self._rcv_adv - rn, 0)
            raw = min((wnd + (1 << ws) - 1) >> ws, 0xFFFF)
        else:
            raw = (target - rn) >> ws
        edge = rn + (raw << ws)
        if edge > self._rcv_adv:
            self._rcv_adv = edge
        return raw

    def _window_update_due(self) -> bool:
        ws = self._rcv_wscale
        rn = self.rcv_nxt
        free = self.rcv_buf - (len(self._rbuf) - self._roff)
        target = rn + min(max(free, 0), 0xFFFF << ws)
        grow = target - self._rcv_adv
        old = self._rcv_adv - rn
        return grow >= min(self.rcv_buf // 2, 2 * self.mss) or (
            old < self.mss and grow >= min(self.rcv_buf // 2, self.mss))

    def _make(self, seq: int, flags: int, payload, now: float, sack_blocks=()) -> Segment:
        seg = Segment(self.local_port, self.remote_port, seq & MASK, self.rcv_nxt & MASK,
                      flags, self._adv_window(), payload)
        if self._ts_ok:
            seg.ts = (self._ts_val(now), self._ts_recent)
        if sack_blocks:
            seg.sack = list(sack_blocks)
        self._last_ack_sent = self.rcv_nxt
        self._ack_now = False
        self._dack_deadline = None
        self._unacked = 0
        return seg

    def _make_syn(self, now: float) -> Segment:
        cfg = self.config
        passive = self.state is S.SYN_RECEIVED
        seg = Segment(self.local_port, self.remote_port, self.iss, 0, SYN,
                      min(self.rcv_buf, 0xFFFF), mss=self.mss)
        if passive:
            seg.flags |= ACK
            seg.ack = self.rcv_nxt & MASK
            self._rcv_adv = max(self._rcv_adv, self.rcv_nxt + seg.window)
            self._last_ack_sent = self.rcv_nxt
            if self._ws_ok:
                seg.wscale = self._rcv_wscale
            if self._ts_ok:
                seg.ts = (self._ts_val(now), self._ts_recent)
            seg.sack_perm = self._sack_ok
        else:
            if cfg.window_scaling:
                seg.wscale = self._rcv_wscale
            if cfg.timestamps:
                seg.ts = (self._ts_val(now), 0)
            seg.sack_perm = cfg.sack
        return seg

    def _make_rst(self) -> Segment:
        return Segment(self.local_port, self.remote_port, self.snd_max & MASK,
                       self.rcv_nxt & MASK, RST | ACK, 0)

    def _challenge_ack(self) -> None:
        self.stats.challenge_acks += 1
        self._ack_now = True

    # ------------------------------------------------------------------ endings

    def _enter_time_wait(self, now: float) -> None:
        self.state = S.TIME_WAIT
        self._rto_deadline = None
        self._persist_deadline = None
        self._tw_deadline = now + 2 * self.config.msl

    def _abort_with(self, ev) -> None:
        self._events.append(ev)
        self._enter_closed()

    def _enter_closed(self) -> None:
        self.state = S.CLOSED
        if self._closed_reported:
            return
        self._closed_reported = True
        self._rto_deadline = None
        self._persist_deadline = None
        self._dack_deadline = None
        self._tw_deadline = None
        self._syn_pending = False
        self._ack_now = False
        self._rexmit_pending = False
        self._probe_pending = False
        self._reasm.clear()
        self._events.append(Closed())
