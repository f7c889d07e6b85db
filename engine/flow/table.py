"""The flow table: flows by key, a global limit, a bounded backlog of pending TCP connects,
and idle order (least recently used first) for datagram flows (UDP, ICMP echo).

Keys are tuples ``(ip_proto, guest_ip, guest_port_or_echo_id, remote_ip, remote_port)``.
A flow object is anything with a boolean attribute ``replied`` (has the remote ever
answered?): when the table is full, the oldest datagram flow that never got an answer makes
room (a guest spraying datagrams at closed ports evicts its own junk, not live flows).
"""
from __future__ import annotations

from collections import OrderedDict

EVICT_SCAN = 256


class FlowTable:
    def __init__(self, max_flows: int, max_pending: int):
        self.max_flows = max_flows
        self.max_pending = max_pending
        self.flows: dict = {}
        self.pending = 0
        self.idle: OrderedDict = OrderedDict()  # key -> last activity (datagram flows)

    def __len__(self) -> int:
        return len(self.flows)

    def get(self, key):
        return self.flows.get(key)

    def admit(self, *, pending: bool = False) -> str | None:
        """None when a new flow may be added now, else the reason it may not ("flow_limit",
        "syn_backlog"). May evict an unanswered datagram flow to make room; the caller
        closes whatever ``evict()`` returned before (see ``make_room``)."""
        if pending and self.pending >= self.max_pending:
            return "syn_backlog"
        if len(self.flows) >= self.max_flows:
            return "flow_limit"
        return None

    def make_room(self):
        """When full: remove and return the oldest never-answered datagram flow (key, flow),
        or None."""
        if len(self.flows) < self.max_flows:
            return None
        for i, key in enumerate(self.idle):
            if i >= EVICT_SCAN:
                break
            flow = self.flows[key]
            if not flow.replied:
                self.remove(key)
                return key, flow
        return None

    def add(self, key, flow, *, now: float | None = None, pending: bool = False) -> None:
        """Add a flow; ``now`` puts it in idle order (datagram flows), ``pending`` counts it
        against the connect backlog until ``connected(key)``."""
        if key in self.flows:
            raise KeyError(f"flow {key!r} exists")
        self.flows[key] = flow
        if now is not None:
            self.idle[key] = now
        if pending:
            self.pending += 1
            flow._pending = True

    def connected(self, key) -> None:
        flow = self.flows.get(key)
        if flow is not None and getattr(flow, "_pending", False):
            flow._pending = False
            self.pending -= 1

    def remove(self, key):
        flow = self.flows.pop(key, None)
        if flow is None:
            return None
        self.idle.pop(key, None)
        if getattr(flow, "_pending", False):
            flow._pending = False
            self.pending -= 1
        return flow

    def touch(self, key, now: float) -> None:
        idle = self.idle
        if key in idle:
            idle[key] = now
            idle.move_to_end(key)

    def expired(self, now: float, timeout: float) -> list:
        """Keys of datagram flows idle for ``timeout`` seconds or more (not removed)."""
        out = []
        for key, last in self.idle.items():
            if now - last < timeout:
                break
            out.append(key)
        return out

    def next_expiry(self, timeout: float) -> float | None:
        for last in self.idle.values():
            return last + timeout
        return None
