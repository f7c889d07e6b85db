"""engine.tcp building blocks: seq arithmetic, range sets, SACK blocks, reassembly, RTO,
NewReno, ISN."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.tcp.congestion import NewReno
from engine.tcp.isn import IsnGenerator
from engine.tcp.reassembly import Reassembly
from engine.tcp.rto import RttEstimator
from engine.tcp.sack import RangeSet, SackReporter
from engine.tcp.seq import (MASK, in_window, seq_add, seq_diff, seq_ge, seq_gt, seq_le,
                            seq_lt, seq_max, seq_min, unwrap)

u32 = st.integers(0, MASK)
dist = st.integers(-(2**31) + 1, 2**31 - 1)


# ---------------------------------------------------------------- seq

@given(u32, dist)
def test_seq_add_diff_inverse(a, d):
    b = seq_add(a, d)
    assert 0 <= b <= MASK
    assert seq_diff(b, a) == d


@given(u32, st.integers(1, 2**31 - 1))
def test_seq_order_across_wrap(a, d):
    b = seq_add(a, d)
    assert seq_lt(a, b) and seq_le(a, b) and seq_gt(b, a) and seq_ge(b, a)
    assert not seq_lt(b, a) and not seq_ge(a, b)
    assert seq_max(a, b) == b and seq_min(a, b) == a
    assert seq_le(a, a) and seq_ge(a, a) and not seq_lt(a, a)


def test_seq_wrap_examples():
    assert seq_lt(0xFFFFFF00, 0x00000010)
    assert seq_diff(0x10, 0xFFFFFF00) == 0x110
    assert seq_add(0xFFFFFFFF, 1) == 0
    assert in_window(5, 0xFFFFFFF0, 0x20) and not in_window(0x10, 0xFFFFFFF0, 0x20)
    assert not in_window(0xFFFFFFEF, 0xFFFFFFF0, 0x20)


@given(u32, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_in_window(left, size, off):
    assert in_window(seq_add(left, off), left, size) == (off < size)


@given(st.integers(0, 2**40), dist)
def test_unwrap(ref, d):
    x = ref + d
    assert unwrap(x & MASK, ref) == x


# ---------------------------------------------------------------- RangeSet

@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=25),
       st.integers(0, 240))
def test_rangeset_matches_set_model(adds, cut):
    rs = RangeSet()
    model = set()
    for s, n in adds:
        rs.add(s, s + n)
        model |= set(range(s, s + n))
    ranges = list(rs)
    covered = set()
    for i, (s, e) in enumerate(ranges):
        assert s < e
        if i:
            assert ranges[i - 1][1] < s  # disjoint and not adjacent
        covered |= set(range(s, e))
    assert covered == model
    assert rs.total() == len(model)
    for x in range(0, 245, 7):
        r = rs.find(x)
        assert (r is not None) == (x in model)
        g, nxt = rs.next_gap(x)
        assert g >= x and g not in model and all(y in model for y in range(x, g))
        assert nxt is None or (nxt > g and nxt in model)
    gaps = rs.gaps(10, 150)
    assert set().union(*[set(range(a, b)) for a, b in gaps]) == set(range(10, 150)) - model
    rs.discard_below(cut)
    assert set().union(*[set(range(a, b)) for a, b in rs]) == {x for x in model if x >= cut}


def test_sack_reporter_most_recent_first():
    rs = RangeSet([(100, 200), (300, 400), (500, 600), (700, 800), (900, 1000)])
    rep = SackReporter()
    rep.on_segment(500)
    rep.on_segment(950)
    assert rep.blocks(rs, 3) == [(900, 1000), (500, 600), (100, 200)]
    rep.on_segment(300)
    assert rep.blocks(rs, 4) == [(300, 400), (900, 1000), (500, 600), (100, 200)]
    assert rep.blocks(RangeSet(), 3) == []


# ---------------------------------------------------------------- Reassembly

@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 60)), max_size=30),
       st.randoms(use_true_random=False))
def test_reassembly_rebuilds_stream(pieces, rnd):
    stream = bytes((i * 7 + 3) & 0xFF for i in range(400))
    base = 2**32 - 100  # unbounded numbers above 2**32 are fine
    r = Reassembly()
    for s, n in pieces:
        r.add(base + s, stream[s:s + n])
    assert r.nbytes == r.ranges.total()
    at = base
    out = bytearray()
    got, at = r.pop_from(at)
    for p in got:
        out += p
    # everything contiguous from 0 came out, and it is the right data
    expect_len = 0
    covered = set()
    for s, n in pieces:
        covered |= set(range(s, min(s + n, 400)))
    while expect_len in covered:
        expect_len += 1
    assert bytes(out) == stream[:expect_len] and at == base + expect_len
    assert r.nbytes == r.ranges.total()


def test_reassembly_pop_from_inside_piece():
    r = Reassembly()
    r.add(100, b"abcdefghij")
    got, at = r.pop_from(105)
    assert b"".join(bytes(p) for p in got) == b"fghij" and at == 110 and not r


# ---------------------------------------------------------------- RTO

def test_rto_rfc6298():
    e = RttEstimator(initial=1.0, min_rto=0.2, max_rto=60)
    assert e.rto == 1.0
    e.on_sample(0.1)
    assert e.srtt == pytest.approx(0.1) and e.rttvar == pytest.approx(0.05)
    assert e.rto == pytest.approx(0.3)
    e.on_sample(0.1)
    assert e.rttvar == pytest.approx(0.0375) and e.rto == pytest.approx(0.25)
    for _ in range(50):
        e.on_sample(0.001)
    assert e.rto == 0.2  # floor
    e.on_timeout()
    e.on_timeout()
    assert e.rto == pytest.approx(0.8)
    for _ in range(20):
        e.on_timeout()
    assert e.rto == 60
    e.reset_backoff()
    assert e.rto == 0.2


# ---------------------------------------------------------------- NewReno

def test_newreno_slow_start_and_avoidance():
    cc = NewReno(1000, initial_window=10_000)
    cc.on_ack(11_000, 10_000, 0)
    assert cc.cwnd == 20_000
    cc.ssthresh = 20_000
    for _ in range(20):
        cc.on_ack(0, 1000, 0)
    assert cc.cwnd == 21_000


def test_newreno_fast_recovery_partial_and_full_ack():
    cc = NewReno(1000, initial_window=10_000)
    assert not cc.on_dupack(1000, 10_000, 11_000)
    assert not cc.on_dupack(1000, 10_000, 11_000)
    assert cc.on_dupack(1000, 10_000, 11_000)  # third: fast retransmit
    assert cc.in_recovery and cc.ssthresh == 5000 and cc.cwnd == 8000 and cc.recover == 11_000
    cc.on_dupack(1000, 10_000, 11_000)
    assert cc.cwnd == 9000  # inflation
    assert cc.on_ack(3000, 2000, 8000)  # partial: retransmit next
    assert cc.in_recovery and cc.cwnd == 9000 - 2000 + 1000
    assert not cc.on_ack(11_000, 8000, 0)  # full
    assert not cc.in_recovery and cc.cwnd == 2000
    # RFC 6582: dupacks for data below recover don't start a new episode
    for _ in range(3):
        assert not cc.on_dupack(10_000, 5000, 15_000)


def test_newreno_sack_lost_and_timeout():
    cc = NewReno(1000)
    assert cc.on_dupack(1000, 20_000, 21_000, sack_lost=True)
    cc.on_timeout(20_000, 21_000)
    assert cc.cwnd == 1000 and cc.ssthresh == 10_000 and not cc.in_recovery


# ---------------------------------------------------------------- ISN

def test_isn_rfc6528():
    g = IsnGenerator(b"k" * 32)
    a = g(b"\x0a\0\0\x01", 1000, b"\x0a\0\0\x02", 80, 10.0)
    assert 0 <= a <= MASK
    assert g(b"\x0a\0\0\x01", 1000, b"\x0a\0\0\x02", 80, 10.0) == a
    # advances with the 4 us clock
    assert seq_diff(g(b"\x0a\0\0\x01", 1000, b"\x0a\0\0\x02", 80, 11.0), a) == 250_000
    assert g(b"\x0a\0\0\x01", 1001, b"\x0a\0\0\x02", 80, 10.0) != a
    assert IsnGenerator(b"other")(b"\x0a\0\0\x01", 1000, b"\x0a\0\0\x02", 80, 10.0) != a
