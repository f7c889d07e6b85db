"""A small single-threaded event loop over ZeroMQ sockets, raw file descriptors and timers.

Every service runs one ``Loop``. Readers are called when their socket or fd is readable;
writers (for fds only) when writable; timers at or after their deadline (monotonic clock).
"""
from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable

import zmq


class Timer:
    """A handle to a scheduled callback; ``cancel()`` makes it a no-op."""

    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback: Callable[[], None]):
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """Poll ZeroMQ sockets and fds; run timers. ``now()`` is ``time.monotonic``."""

    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._readers: dict = {}
        self._writers: dict = {}
        self._timers: list = []
        self._seq = itertools.count()
        self._running = False
        self.now = time.monotonic

    # -- readers and writers -------------------------------------------------------------
    def _key(self, obj):
        if isinstance(obj, zmq.Socket):
            return obj
        return obj if isinstance(obj, int) else obj.fileno()

    def _update(self, key) -> None:
        flags = 0
        if key in self._readers:
            flags |= zmq.POLLIN
        if key in self._writers:
            flags |= zmq.POLLOUT
        if flags:
            self._poller.register(key, flags)
        else:
            try:
                self._poller.unregister(key)
            except KeyError:
                pass

    def add_reader(self, obj, callback: Callable[[], None]) -> None:
        key = self._key(obj)
        self._readers[key] = callback
        self._update(key)

    def remove_reader(self, obj) -> None:
        key = self._key(obj)
        self._readers.pop(key, None)
        self._update(key)

    def add_writer(self, obj, callback: Callable[[], None]) -> None:
        key = self._key(obj)
        self._writers[key] = callback
        self._update(key)

    def remove_writer(self, obj) -> None:
        key = self._key(obj)
        self._writers.pop(key, None)
        self._update(key)

    # -- timers --------------------------------------------------------------------------
    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        t = Timer(deadline, callback)
        heapq.heappush(self._timers, (deadline, next(self._seq), t))
        return t

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now() + delay, callback)

    def call_every(self, interval: float, callback: Callable[[], None]) -> None:
        def tick() -> None:
            self.call_later(interval, tick)
            callback()

        self.call_later(interval, tick)

    # -- running -------------------------------------------------------------------------
    def stop(self) -> None:
        self._running = False

    def run_once(self, max_wait: float | None = None) -> None:
        timeout_ms = None
        now = self.now()
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            timeout_ms = max(0.0, (self._timers[0][0] - now) * 1000.0)
        if max_wait is not None:
            cap = max_wait * 1000.0
            timeout_ms = cap if timeout_ms is None else min(timeout_ms, cap)
        events = self._poller.poll(timeout_ms)
        for key, flags in events:
            # POLLERR (a pending socket error such as a UDP socket's ICMP port unreachable, or a
            # hang-up) wakes the reader and the writer: their recv/send surfaces the error and
            # clears it. Left unread, poll would report it again at once, forever.
            if flags & (zmq.POLLIN | zmq.POLLERR):
                cb = self._readers.get(key)
                if cb is not None:
                    cb()
            if flags & (zmq.POLLOUT | zmq.POLLERR) and key in self._writers:
                cb = self._writers.get(key)
                if cb is not None:
                    cb()
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _, _, t = heapq.heappop(self._timers)
            if not t.cancelled:
                t.callback()

    def run(self) -> None:
        self._running = True
        while self._running:
            self.run_once()
