"""The lease table: at most one record per address and one per client MAC, deadlines in a heap,
and per-state queues in age order (oldest first) for reuse and eviction.

States and what ends them:

    offered   --offer_timeout--> forgotten (or back to its earlier free state)
    bound     --lease time-----> expired
    released, expired            (free: the address may go to anyone, but the record
                                  remembers which client had it, so it gets it again)
    declined  --decline_hold---> forgotten (a declined record is detached from its client)

The table only keeps these structures consistent; the policy (who gets which address, when a
record may be evicted) is the server's.
"""
from __future__ import annotations

import heapq
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterator

IPv4 = ipaddress.IPv4Address

OFFERED, BOUND, RELEASED, EXPIRED, DECLINED = "offered", "bound", "released", "expired", "declined"
STATES = (OFFERED, BOUND, RELEASED, EXPIRED, DECLINED)
TIMED = frozenset({OFFERED, BOUND, DECLINED})
FREE = frozenset({RELEASED, EXPIRED})
_QUEUE = {OFFERED: OFFERED, BOUND: BOUND, RELEASED: "free", EXPIRED: "free", DECLINED: DECLINED}


@dataclass(eq=False, slots=True)
class Lease:
    mac: str
    ip: IPv4
    state: str
    expires: float  # deadline for timed states; the time it became free for free ones
    hostname: str = ""
    client_id: str = ""
    prev_state: str = ""  # for an offer of the client's own free record: the state to go back to

    def as_dict(self) -> dict:
        return {"mac": self.mac, "ip": str(self.ip), "state": self.state, "expires": self.expires,
                "hostname": self.hostname, "client_id": self.client_id}


class LeaseTable:
    def __init__(self, counts_in_pool: Callable[[IPv4], bool] = lambda ip: True):
        self.by_ip: dict[IPv4, Lease] = {}
        self.by_mac: dict[str, Lease] = {}
        self._queues: dict[str, dict[IPv4, Lease]] = {q: {} for q in (OFFERED, BOUND, "free", DECLINED)}
        self._heap: list[tuple[float, int, Lease]] = []
        self._seq = 0
        self._in_pool = counts_in_pool
        self.pool_used = 0  # records whose address counts_in_pool

    def __len__(self) -> int:
        return len(self.by_ip)

    def __iter__(self) -> Iterator[Lease]:
        return iter(self.by_ip.values())

    def oldest(self, state: str) -> Iterator[Lease]:
        """Records in ``state`` (``free`` = released or expired), oldest first. Do not modify the
        table while iterating."""
        return iter(self._queues[_QUEUE.get(state, state)].values())

    # -- changes -----------------------------------------------------------------------------
    def put(self, lease: Lease) -> None:
        """Insert ``lease``, replacing the record for its address and its client's old record."""
        old = self.by_ip.get(lease.ip)
        if old is not None:
            self.remove(old)
        prev = self.by_mac.get(lease.mac)
        if prev is not None:
            self.remove(prev)
        self.by_ip[lease.ip] = lease
        self.by_mac[lease.mac] = lease
        if self._in_pool(lease.ip):
            self.pool_used += 1
        self._enqueue(lease)

    def remove(self, lease: Lease) -> None:
        if self.by_ip.get(lease.ip) is not lease:
            return
        del self.by_ip[lease.ip]
        if self.by_mac.get(lease.mac) is lease:
            del self.by_mac[lease.mac]
        if self._in_pool(lease.ip):
            self.pool_used -= 1
        self._queues[_QUEUE[lease.state]].pop(lease.ip, None)

    def detach(self, lease: Lease) -> None:
        """Keep the record for its address but forget that its client has it."""
        if self.by_mac.get(lease.mac) is lease:
            del self.by_mac[lease.mac]

    def update(self, lease: Lease, state: str, expires: float) -> None:
        """Move a record to ``state`` until ``expires``; it becomes the youngest in its queue."""
        self._queues[_QUEUE[lease.state]].pop(lease.ip, None)
        lease.state, lease.expires = state, expires
        self._enqueue(lease)

    def _enqueue(self, lease: Lease) -> None:
        self._queues[_QUEUE[lease.state]][lease.ip] = lease
        if lease.state in TIMED:
            self._seq += 1
            heapq.heappush(self._heap, (lease.expires, self._seq, lease))
            if len(self._heap) > 2 * len(self.by_ip) + 64:
                self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(le.expires, i, le) for i, le in enumerate(self.by_ip.values()) if le.state in TIMED]
        self._seq = len(self._heap)
        heapq.heapify(self._heap)

    def _live(self, entry) -> bool:
        expires, _, lease = entry
        return self.by_ip.get(lease.ip) is lease and lease.state in TIMED and lease.expires == expires

    # -- deadlines ---------------------------------------------------------------------------
    def pop_due(self, now: float) -> list[Lease]:
        """Records whose deadline is at or before ``now``, earliest first (still in the table;
        the caller moves them on)."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._live(entry):
                due.append(entry[2])
        return due

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None
