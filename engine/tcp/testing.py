"""Test helpers: join two :class:`TcpConnection` ends over an in-memory link with a manual
clock, seeded loss / reordering / duplication, and simple "applications" on each end.

Not used by production code; lives here so flow-service tests can reuse it.
"""
from __future__ import annotations

import heapq
import random

from wire.tcp import build_tcp, parse_tcp

from .conn import State, TcpConnection

ADDR_A = bytes([10, 0, 2, 15])
ADDR_B = bytes([10, 0, 2, 2])


class App:
    """Drives one end: sends ``to_send`` as fast as the send buffer allows, reads everything
    when ``reading`` is true, closes after sending everything if ``close_when_done``."""

    def __init__(self, conn: TcpConnection, to_send: bytes = b"", *, reading: bool = True,
                 close_when_done: bool = False, chunk: int = 1 << 20):
        self.conn = conn
        self.to_send = to_send
        self.sent = 0
        self.received = bytearray()
        self.reading = reading
        self.close_when_done = close_when_done
        self.chunk = chunk
        self.events: list = []
        self.closed_called = False

    def drive(self) -> None:
        c = self.conn
        self.events += c.events()
        if (self.sent < len(self.to_send) and not self.closed_called
                and c.state in (State.ESTABLISHED, State.CLOSE_WAIT)):
            self.sent += c.send(memoryview(self.to_send)[self.sent:self.sent + self.chunk])
        if (self.close_when_done and not self.closed_called and self.sent == len(self.to_send)
                and c.state in (State.ESTABLISHED, State.CLOSE_WAIT)):
            self.closed_called = True
            c.close()
        if self.reading and c.readable():
            self.received += c.recv()
        self.events += c.events()

    def event_types(self) -> list:
        return [type(e).__name__ for e in self.events]


class Link:
    """Two ends, a clock and a queue of segments in flight.

    ``loss``, ``dup``, ``reorder`` are probabilities per segment (seeded); ``filter(seg, frm)``
    may return False to drop a specific segment (``frm`` is "a" or "b"). With ``wire`` every
    segment is encoded and decoded (checksums, options) on the way.
    """

    def __init__(self, a: App, b: App, *, now: float = 0.0, delay: float = 0.0005,
                 loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0, seed: int = 0,
                 wire: bool = True, filter=None):
        self.a = a
        self.b = b
        self.now = now
        self.delay = delay
        self.loss = loss
        self.dup = dup
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.wire = wire
        self.filter = filter
        self._q: list = []
        self._n = 0
        self.log: list = []           # (time, "a"/"b", segment) as transmitted
        self.keep_log = False
        self.delivered = 0

    def _emit(self, frm: str, seg) -> None:
        if self.keep_log:
            self.log.append((self.now, frm, seg))
        if self.filter is not None and self.filter(seg, frm) is False:
            return
        r = self.rng
        if self.loss and r.random() < self.loss:
            return
        if self.wire:
            src, dst = (ADDR_A, ADDR_B) if frm == "a" else (ADDR_B, ADDR_A)
            item = (build_tcp(seg, src, dst), src, dst)
        else:
            item = seg
        t = self.now + self.delay
        if self.reorder and r.random() < self.reorder:
            t += self.delay * r.randint(1, 8)
        copies = 2 if self.dup and r.random() < self.dup else 1
        for _ in range(copies):
            self._n += 1
            heapq.heappush(self._q, (t, self._n, "b" if frm == "a" else "a", item))

    def inject(self, to: str, seg) -> None:
        """Deliver ``seg`` to end ``to`` at the next step."""
        self._n += 1
        heapq.heappush(self._q, (self.now, self._n, to, seg))

    def pump(self) -> None:
        for name, app in (("a", self.a), ("b", self.b)):
            app.drive()
            for seg in app.conn.segments_out(self.now):
                self._emit(name, seg)

    def step(self) -> bool:
        """Pump outputs, then advance the clock to the next delivery or timer and process
        it. Returns False when nothing is pending at all."""
        self.pump()
        cands = [x for x in (self._q[0][0] if self._q else None, self.a.conn.timer(),
                             self.b.conn.timer()) if x is not None]
        if not cands:
            return False
        t = min(cands)
        if t > self.now:
            self.now = t
        while self._q and self._q[0][0] <= self.now:
            _, _, to, item = heapq.heappop(self._q)
            app = self.a if to == "a" else self.b
            if isinstance(item, tuple):
                data, src, dst = item
                seg = parse_tcp(data, src=src, dst=dst)
            else:
                seg = item
            self.delivered += 1
            app.conn.on_segment(seg, self.now)
        for app in (self.a, self.b):
            t = app.conn.timer()
            if t is not None and t <= self.now:
                app.conn.on_timer(self.now)
        return True

    def run(self, until=None, *, max_time: float = 600.0, max_steps: int = 2_000_000) -> bool:
        """Step until ``until()`` is true (checked after each step), nothing is pending, or
        the clock passes ``max_time`` seconds from now. Returns ``until()`` (or True)."""
        deadline = self.now + max_time
        for _ in range(max_steps):
            if until is not None and until():
                return True
            if not self.step() or self.now > deadline:
                break
        self.pump()
        return until() if until is not None else True

    def advance(self, dt: float) -> None:
        """Run for ``dt`` seconds of clock time."""
        end = self.now + dt
        while True:
            self.pump()
            cands = [x for x in (self._q[0][0] if self._q else None, self.a.conn.timer(),
                                 self.b.conn.timer()) if x is not None]
            if not cands or min(cands) > end:
                self.now = end
                self.pump()
                return
            self.step()


def connect_pair(*, isn_a: int = 0xFFFFFF00, isn_b: int = 0xFFFFF000, now: float = 0.0,
                 a_kw: dict | None = None, b_kw: dict | None = None,
                 a_app: dict | None = None, b_app: dict | None = None, **link_kw) -> Link:
    """Active end "a" (port 40000) connects to passive end "b" (port 80), accepted at once.
    The handshake is not yet run: call ``link.run(...)``."""
    a = TcpConnection.active(local_port=40000, remote_port=80, now=now, isn=isn_a,
                             **(a_kw or {}))
    syn = a.segments_out(now)[0]
    syn = parse_tcp(build_tcp(syn, ADDR_A, ADDR_B), src=ADDR_A, dst=ADDR_B)
    b = TcpConnection.passive(syn, now=now, isn=isn_b, **(b_kw or {}))
    b.accept(now)
    return Link(App(a, **(a_app or {})), App(b, **(b_app or {})), now=now, **link_kw)
