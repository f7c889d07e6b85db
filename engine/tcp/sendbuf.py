"""The send buffer of a TCP connection: bytes queued by the application, not yet acknowledged.

Held as a queue of immutable chunks rather than one bytearray, so that the bulk path copies
nothing itself: ``append`` keeps a ``bytes`` chunk as it is (a host socket's ``recv`` result),
``consume`` (bytes acknowledged) drops chunks without moving the rest, and ``view`` hands out
a zero-copy memoryview when a segment lies inside one chunk, which is the usual case: chunks
are up to 256 KiB, segments at most 64 KiB. A memoryview of ``bytes`` can never pin a buffer
that has to grow, so a view may be kept for as long as the caller likes.

Small appends (interactive traffic) are gathered in a bytearray tail and frozen into one
chunk once it holds ``TAIL_MAX`` bytes or a large chunk follows, so a long run of tiny
writes does not become a long run of tiny chunks. A view that touches the tail, or spans
chunks, is a copy.
"""
from __future__ import annotations

from collections import deque

TAIL_MAX = 64 * 1024  # small appends are gathered up to this size before becoming a chunk
SMALL = 4096          # appends below this go into the tail


class SendBuffer:
    __slots__ = ("_chunks", "_head", "_tail", "_len")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()  # frozen chunks, oldest first
        self._head = 0                         # bytes of _chunks[0] already consumed
        self._tail = bytearray()               # small appends after the last chunk
        self._len = 0                          # bytes held (unconsumed), tail included

    def __len__(self) -> int:
        return self._len

    def append(self, data) -> None:
        """Queue ``data`` (bytes kept without a copy; other buffers are copied)."""
        n = len(data)
        if not n:
            return
        if n < SMALL:
            self._tail += data
            if len(self._tail) >= TAIL_MAX:
                self._freeze()
        else:
            self._freeze()
            self._chunks.append(data if type(data) is bytes else bytes(data))
        self._len += n

    def _freeze(self) -> None:
        if self._tail:
            self._chunks.append(bytes(self._tail))
            self._tail = bytearray()

    def consume(self, n: int) -> None:
        """Forget the first ``n`` bytes (acknowledged)."""
        if n <= 0:
            return
        if n > self._len:
            raise ValueError(f"consume({n}) of a {self._len}-byte buffer")
        self._len -= n
        chunks = self._chunks
        while n and chunks:
            left = len(chunks[0]) - self._head
            if n < left:
                self._head += n
                return
            n -= left
            chunks.popleft()
            self._head = 0
        if n:  # the rest comes out of the tail
            del self._tail[:n]

    def view(self, off: int, n: int):
        """``n`` bytes from offset ``off`` (0 = the oldest held byte), fewer if the buffer ends
        first: a memoryview when they lie in one chunk, else a new bytes object."""
        n = max(0, min(n, self._len - off))
        if n == 0 or off < 0:
            return b""
        pos = off + self._head
        for chunk in self._chunks:
            size = len(chunk)
            if pos < size:
                if pos + n <= size:
                    return memoryview(chunk)[pos:pos + n]
                return self._gather(off, n)
            pos -= size
        return bytes(self._tail[pos:pos + n])

    def _gather(self, off: int, n: int) -> bytes:
        parts = []
        pos = off + self._head
        for chunk in self._chunks:
            size = len(chunk)
            if pos >= size:
                pos -= size
                continue
            take = chunk[pos:pos + n]
            parts.append(take)
            n -= len(take)
            pos = 0
            if not n:
                return b"".join(parts)
        parts.append(bytes(self._tail[pos:pos + n]))
        return b"".join(parts)
