"""The flow table: limits, SYN backlog, idle expiry with an injected clock, eviction."""
from __future__ import annotations

import pytest

from engine.flow.table import FlowTable


class F:
    def __init__(self, replied=False):
        self.replied = replied


def test_limit_and_backlog():
    t = FlowTable(max_flows=3, max_pending=2)
    t.add("a", F(True), pending=True)
    t.add("b", F(True), pending=True)
    assert t.admit(pending=True) == "syn_backlog"
    assert t.admit() is None  # a datagram flow may still come in
    t.connected("a")
    assert t.pending == 1 and t.admit(pending=True) is None
    t.add("c", F(True))
    assert t.admit() == "flow_limit"
    t.remove("b")  # pending removed: backlog freed too
    assert t.pending == 0 and len(t) == 2
    with pytest.raises(KeyError):
        t.add("a", F())


def test_idle_expiry_in_order_and_touch():
    t = FlowTable(10, 10)
    t.add("u1", F(), now=0.0)
    t.add("u2", F(), now=10.0)
    t.add("tcp", F(True))  # not a datagram flow: never idles out
    assert t.expired(89.9, 90.0) == []
    assert t.expired(90.0, 90.0) == ["u1"]
    t.touch("u1", 50.0)
    assert t.expired(100.0, 90.0) == ["u2"]
    assert t.next_expiry(90.0) == 100.0
    t.remove("u2")
    assert t.expired(1000.0, 90.0) == ["u1"]
    assert "tcp" not in t.idle


def test_make_room_evicts_oldest_unanswered_datagram_flow_only():
    t = FlowTable(3, 10)
    live = F(replied=True)
    t.add("live", live, now=0.0)
    t.add("junk1", F(), now=1.0)
    t.add("junk2", F(), now=2.0)
    assert t.admit() == "flow_limit"
    key, _ = t.make_room()
    assert key == "junk1" and t.admit() is None
    t.add("junk3", F(), now=3.0)
    assert t.make_room()[0] == "junk2"
    t.add("x", F(True))
    t.remove("junk3")
    t.add("tcp", F(True))
    assert t.make_room() is None  # nothing evictable: the caller refuses the new flow
    assert t.get("live") is live
