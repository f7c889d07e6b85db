"""Pair tests: two TcpConnection ends over an in-memory link (engine.tcp.testing) with a manual
clock, ISNs near 2**32, and seeded loss / reordering / duplication."""
import random

import pytest

from engine.tcp import (Closed, Connected, EndOfStream, Reset, State, TcpConfig,
                        TcpConnection)
from engine.tcp.seq import MASK
from engine.tcp.testing import ADDR_A, ADDR_B, connect_pair
from wire.tcp import ACK, FIN, RST, Segment, build_tcp, parse_tcp


def blob(n, seed):
    return random.Random(seed).randbytes(n)


def both_closed(link):
    return lambda: link.a.conn.state is State.CLOSED and link.b.conn.state is State.CLOSED


def finish(link):
    """Collect the last events."""
    link.a.drive()
    link.b.drive()


# ---------------------------------------------------------------- bulk transfer

@pytest.mark.parametrize("seed,loss,reorder,dup", [
    (1, 0.0, 0.0, 0.0),
    (2, 0.02, 0.05, 0.02),
    (3, 0.05, 0.10, 0.05),
])
def test_bidirectional_transfer_intact(seed, loss, reorder, dup):
    da, db = blob(3_000_000, seed), blob(2_000_000, seed + 100)
    link = connect_pair(a_app=dict(to_send=da, close_when_done=True),
                        b_app=dict(to_send=db, close_when_done=True),
                        loss=loss, reorder=reorder, dup=dup, seed=seed)
    assert link.run(both_closed(link), max_time=600)
    finish(link)
    assert bytes(link.b.received) == da
    assert bytes(link.a.received) == db
    for app in (link.a, link.b):
        ev = app.event_types()
        assert ev[0] == "Connected" and ev[-1] == "Closed"
        assert ev.count("EndOfStream") == 1 and "Reset" not in ev
    sa, sb = link.a.conn.stats, link.b.conn.stats
    assert sa.bytes_acked == len(da) and sb.bytes_in == len(da)
    if loss:
        assert sa.retransmits and sb.retransmits
        assert sa.fast_retransmits + sb.fast_retransmits > 0
        assert sa.ooo_segments + sb.ooo_segments > 0


def test_sequence_numbers_wrap_during_transfer():
    data = blob(400_000, 9)
    link = connect_pair(isn_a=MASK - 1000, isn_b=MASK - 5, a_app=dict(to_send=data),
                        loss=0.03, reorder=0.05, seed=9)
    link.keep_log = True
    assert link.run(lambda: len(link.b.received) == len(data), max_time=120)
    assert bytes(link.b.received) == data
    seqs = [s.seq for _, frm, s in link.log if frm == "a"]
    assert max(seqs) > MASK - 2000 and min(seqs) < 400_000  # really crossed 2**32


def test_tso_sized_segments_both_ways():
    da, db = blob(1_000_000, 4), blob(1_000_000, 5)
    kw = dict(max_segment=65000, rcv_buf=1 << 20, snd_buf=1 << 20)
    link = connect_pair(a_kw=kw, b_kw=kw, a_app=dict(to_send=da, close_when_done=True),
                        b_app=dict(to_send=db, close_when_done=True), loss=0.01, seed=4)
    link.keep_log = True
    assert link.run(both_closed(link), max_time=120)
    assert bytes(link.b.received) == da and bytes(link.a.received) == db
    assert max(len(s.payload) for _, _, s in link.log) > 60000


def test_no_sack_no_timestamps_no_wscale_peer():
    cfg = TcpConfig(sack=False, timestamps=False, window_scaling=False)
    data = blob(500_000, 6)
    link = connect_pair(a_kw=dict(config=cfg), a_app=dict(to_send=data, close_when_done=True),
                        b_app=dict(close_when_done=True), loss=0.03, reorder=0.05, seed=6)
    link.keep_log = True
    assert link.run(both_closed(link), max_time=300)
    assert bytes(link.b.received) == data
    assert all(s.ts is None and not s.sack for _, _, s in link.log)
    assert link.b.conn.stats.retransmits == 0 and link.a.conn.stats.retransmits > 0


def test_single_loss_recovered_by_fast_retransmit_not_rto():
    dropped = []

    def drop_one(seg, frm):
        if frm == "a" and len(seg.payload) and not dropped and link.a.conn.stats.bytes_out > 30_000:
            dropped.append(seg.seq)
            return False
        return True

    data = blob(300_000, 7)
    link = connect_pair(a_app=dict(to_send=data), filter=drop_one)
    assert link.run(lambda: len(link.b.received) == len(data), max_time=60)
    assert bytes(link.b.received) == data and dropped
    st = link.a.conn.stats
    assert st.fast_retransmits == 1 and st.timeouts == 0 and st.retransmits == 1


# ---------------------------------------------------------------- half-close

def test_half_close_active_side_first():
    da, db = blob(10_000, 1), blob(500_000, 2)
    link = connect_pair(a_app=dict(to_send=da, close_when_done=True), b_app=dict(to_send=db))
    assert link.run(lambda: link.b.conn.state is State.CLOSE_WAIT)
    assert link.run(lambda: link.a.conn.state is State.FIN_WAIT_2)
    # b keeps sending after a's FIN
    assert link.run(lambda: len(link.a.received) == len(db))
    assert link.a.conn.state is State.FIN_WAIT_2 and link.b.conn.state is State.CLOSE_WAIT
    link.b.conn.close()
    assert link.run(lambda: link.a.conn.state is State.TIME_WAIT)
    assert link.run(lambda: link.b.conn.state is State.CLOSED)
    t_tw = link.now
    assert link.run(lambda: link.a.conn.state is State.CLOSED)
    assert link.now - t_tw == pytest.approx(2.0, abs=0.01)  # 2 * MSL (1 s)
    finish(link)
    assert bytes(link.b.received) == da and bytes(link.a.received) == db
    assert link.b.event_types()[-1] == "Closed"


def test_half_close_passive_side_first():
    da, db = blob(500_000, 3), blob(10_000, 4)
    link = connect_pair(a_app=dict(to_send=da), b_app=dict(to_send=db, close_when_done=True),
                        loss=0.02, seed=3)
    assert link.run(lambda: len(link.b.received) == len(da), max_time=120)
    assert link.a.conn.state is State.CLOSE_WAIT and link.b.conn.state is State.FIN_WAIT_2
    assert link.a.event_types().count("EndOfStream") == 1
    link.a.conn.close()
    assert link.run(both_closed(link), max_time=60)
    assert bytes(link.a.received) == db


def test_simultaneous_close_goes_through_closing():
    link = connect_pair()
    assert link.run(lambda: link.a.conn.state is State.ESTABLISHED
                    and link.b.conn.state is State.ESTABLISHED)
    link.pump()
    link.a.conn.close()
    link.b.conn.close()
    link.keep_log = True
    seen = set()
    assert link.run(lambda: (seen.update((link.a.conn.state, link.b.conn.state)),
                             both_closed(link)())[1])
    assert State.CLOSING in seen and State.TIME_WAIT in seen


# ---------------------------------------------------------------- flow control

def test_zero_window_then_reopen():
    data = blob(1_500_000, 8)
    link = connect_pair(a_app=dict(to_send=data, close_when_done=True),
                        b_app=dict(reading=False))
    b = link.b.conn
    link.run(lambda: b.readable() >= b.rcv_buf - 2000, max_time=10)
    link.advance(30.0)  # receiver app asleep: sender must be probing, not giving up
    assert link.a.conn.state is State.ESTABLISHED and link.a.sent < len(data)
    assert b.readable() <= b.rcv_buf
    assert link.a.conn.snd_wnd == 0 and link.a.conn.stats.window_probes >= 3
    assert link.a.conn.stats.timeouts == 0
    link.b.reading = True
    assert link.run(lambda: len(link.b.received) == len(data), max_time=60)
    assert bytes(link.b.received) == data


def test_zero_window_lost_update_recovered_by_probe():
    data = blob(600_000, 10)
    drops = []

    def drop_updates(seg, frm):
        # drop b's window updates for a while
        if (frm == "b" and seg.window and link.a.conn.state is State.ESTABLISHED
                and link.a.conn.snd_wnd == 0 and len(drops) < 5):
            drops.append(seg)
            return False
        return True

    link = connect_pair(a_app=dict(to_send=data), b_app=dict(reading=False),
                        filter=drop_updates)
    b = link.b.conn
    link.run(lambda: b.readable() >= b.rcv_buf - 2000, max_time=10)
    link.advance(1.0)
    link.b.reading = True
    assert link.run(lambda: len(link.b.received) == len(data), max_time=120)
    assert drops and link.a.conn.stats.window_probes > 0


def test_receiver_memory_bounded():
    data = blob(2_000_000, 11)
    link = connect_pair(a_app=dict(to_send=data), b_app=dict(reading=False),
                        b_kw=dict(rcv_buf=64 * 1024), loss=0.05, reorder=0.2, seed=11)
    b = link.b.conn
    peak = 0
    for _ in range(3000):
        link.step()
        peak = max(peak, b.readable() + b._reasm.nbytes)
    assert peak <= 64 * 1024 + (1 << b._rcv_wscale)


# ---------------------------------------------------------------- RST in each state

def xfer(src, dst, now, drop=lambda s: False):
    segs = src.segments_out(now)
    for s in segs:
        if not drop(s):
            dst.on_segment(parse_tcp(build_tcp(s, ADDR_A, ADDR_B)), now)
    return segs


def pair():
    a = TcpConnection.active(local_port=40000, remote_port=80, now=0, isn=0xFFFFFF00)
    syn = a.segments_out(0)[0]
    b = TcpConnection.passive(syn, now=0, isn=0xFFFFFFFE)
    return a, b


def established_pair():
    a, b = pair()
    b.accept(0)
    xfer(b, a, 0)
    xfer(a, b, 0)
    assert a.state is State.ESTABLISHED and b.state is State.ESTABLISHED
    a.events(), b.events()
    return a, b


def into(state):
    """(a, b) with b in ``state``; a is the peer that will send the RST."""
    everything = lambda s: True  # noqa: E731
    if state is State.SYN_RECEIVED:
        a, b = pair()
        b.accept(0)
        xfer(b, a, 0, drop=everything)
        return a, b
    a, b = established_pair()
    if state is State.FIN_WAIT_1:
        b.close()
        xfer(b, a, 0.1, drop=everything)
    elif state is State.FIN_WAIT_2:
        b.close()
        xfer(b, a, 0.1)
        xfer(a, b, 0.1)
    elif state is State.CLOSE_WAIT:
        a.close()
        xfer(a, b, 0.1)
    elif state is State.CLOSING:
        a.close()
        b.close()
        xfer(b, a, 0.1, drop=everything)
        xfer(a, b, 0.1)
    elif state is State.LAST_ACK:
        a.close()
        xfer(a, b, 0.1)
        b.close()
        xfer(b, a, 0.1, drop=everything)
    elif state is State.TIME_WAIT:
        b.close()
        xfer(b, a, 0.1)
        xfer(a, b, 0.1)
        a.close()
        xfer(a, b, 0.1)
    assert b.state is state
    return a, b


@pytest.mark.parametrize("state", [State.SYN_RECEIVED, State.ESTABLISHED, State.FIN_WAIT_1,
                                   State.FIN_WAIT_2, State.CLOSE_WAIT, State.CLOSING,
                                   State.LAST_ACK])
def test_rst_in_each_state(state):
    a, b = into(state)
    b.events()
    if state is State.SYN_RECEIVED:
        rst = Segment(40000, 80, (a.iss + 1) & MASK, 0, RST, 0)
    else:
        rst = a.abort()
    # a wrong sequence number only draws a challenge ACK (RFC 5961)
    bad = Segment(rst.sport, rst.dport, (rst.seq + 1) & MASK, rst.ack, rst.flags, 0)
    b.on_segment(bad, 0.2)
    assert b.state is state
    b.on_segment(parse_tcp(build_tcp(rst, ADDR_A, ADDR_B)), 0.2)
    assert b.state is State.CLOSED
    assert b.events() == [Reset("reset"), Closed()]
    assert b.timer() is None


def test_rst_in_time_wait_just_ends_it():
    a, b = into(State.TIME_WAIT)
    b.events()
    b.on_segment(Segment(40000, 80, b.rcv_nxt & MASK, 0, RST, 0), 0.2)
    assert b.state is State.CLOSED and b.events() == [Closed()]


def test_rst_in_syn_sent_refused():
    a, b = pair()
    rst = b.refuse()
    a.on_segment(parse_tcp(build_tcp(rst, ADDR_B, ADDR_A)), 0.1)
    assert a.state is State.CLOSED and a.events() == [Reset("refused"), Closed()]


def test_data_before_and_after_fin_flags():
    a, b = established_pair()
    a.send(b"hello")
    a.close()
    segs = xfer(a, b, 0.1)
    assert segs[-1].flags & FIN and segs[-1].flags & ACK
    assert b.recv() == b"hello" and b.events()[-1] == EndOfStream()
    assert b.state is State.CLOSE_WAIT
    b.send(b"world")
    xfer(b, a, 0.2)
    assert a.recv() == b"world" and a.state is State.FIN_WAIT_2


def test_abort_mid_transfer_peer_sees_reset():
    data = blob(200_000, 12)
    link = connect_pair(a_app=dict(to_send=data))
    link.run(lambda: len(link.b.received) > 50_000)
    rst = link.a.conn.abort()
    link.inject("b", rst)
    link.run(lambda: link.b.conn.state is State.CLOSED, max_time=5)
    finish(link)
    assert "Reset" in link.b.event_types()


def test_retransmission_gives_up_when_peer_vanishes():
    cut = [False]
    data = blob(100_000, 13)
    link = connect_pair(a_app=dict(to_send=data), a_kw=dict(config=TcpConfig(max_retries=4)),
                        filter=lambda seg, frm: not cut[0])
    link.run(lambda: len(link.b.received) > 20_000)
    cut[0] = True
    assert link.run(lambda: link.a.conn.state is State.CLOSED, max_time=60)
    finish(link)
    assert link.a.event_types()[-2:] == ["Reset", "Closed"]
    assert link.a.events[-2] == Reset("timeout")
    assert link.a.conn.stats.timeouts == 4


def test_connected_event_on_both_ends():
    link = connect_pair()
    link.run(lambda: link.b.conn.state is State.ESTABLISHED)
    finish(link)
    assert link.a.events[:1] == [Connected()] and link.b.events[:1] == [Connected()]


def test_output_cap_below_peer_mss_does_not_stop_and_wait():
    """A peer MSS larger than max_segment (jumbo link: MSS 65468, cap 65241) must still allow
    several segments in flight; sender SWS avoidance compares against the cap."""
    from engine.tcp.conn import TcpConnection
    from wire.tcp import Segment, SYN, ACK
    syn = Segment(40000, 80, 1000, 0, SYN, 65535, mss=65468, wscale=7, sack_perm=True, ts=(1, 0))
    c = TcpConnection.passive(syn, now=0.0, isn=5000, mss=65468, max_segment=65241, snd_buf=4 << 20)
    c.accept(0.0)
    c.segments_out(0.0)
    c.on_segment(Segment(40000, 80, 1001, 5001, ACK, 40000, ts=(2, 1)), 0.01)  # window 40000 << 7
    c.events()
    c.send(b"x" * (1 << 20))
    data = [s for s in c.segments_out(0.02) if s.payload]
    assert len(data) >= 3 and all(len(s.payload) <= 65241 for s in data)
