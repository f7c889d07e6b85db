"""Guest packet parsing, reply building, fragments; hypothesis fuzz of the receive path."""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.flow import packets
from engine.flow.frag import Reassembler
from engine.flow.packets import Builder, Unsupported, rst_for, tcp_frame
from wire import icmp, ipv4, udp
from wire.ethernet import ETH_HEADER, ETHERTYPE_IPV4, FrameError
from wire.tcp import ACK, FIN, PSH, RST, SYN, Segment, build_tcp, parse_tcp

GW = bytes.fromhex("5a94efe40cdd")
MAC = bytes.fromhex("525400123456")
SRC, DST = bytes([192, 168, 65, 50]), bytes([192, 168, 65, 254])


def frame(proto, body, **kw):
    return ETH_HEADER.pack(GW, MAC, ETHERTYPE_IPV4) + bytes(ipv4.build_ipv4(SRC, DST, proto, len(body), **kw)) + body


def test_parse_udp_tcp_icmp():
    p = packets.parse(frame(17, udp.build_udp(SRC, DST, 1000, 53, b"q")))
    assert (p.proto, p.sport, p.dport, p.src, p.dst, p.src_mac) == (17, 1000, 53, SRC, DST, MAC)
    p = packets.parse(frame(6, build_tcp(Segment(1, 2, 3, 4, SYN, 5), SRC, DST)))
    assert (p.sport, p.dport) == (1, 2)
    p = packets.parse(frame(1, icmp.build_icmp(8, 0, 1, 2, b"")))
    assert p.sport is None
    with pytest.raises(Unsupported):
        packets.parse(frame(47, b"gre!" * 4))
    with pytest.raises(FrameError):
        packets.parse(frame(17, b"abc"))


def test_tcp_frame_matches_build_tcp():
    for seg in (Segment(80, 40000, 0xFFFFFFF0, 12345, ACK | PSH, 512, os.urandom(1001), ts=(1, 2)),
                Segment(80, 40000, 1, 2, SYN | ACK, 65535, mss=1460, wscale=7, sack_perm=True, ts=(5, 6)),
                Segment(80, 40000, 1, 2, ACK, 100, b"", sack=[(10, 20), (30, 40)]),
                Segment(80, 40000, 1, 2, ACK | FIN, 100, b"x")):
        f = tcp_frame(b"E" * 14, DST, SRC, seg, 7)
        ip = ipv4.parse_ipv4(f, 14)
        assert bytes(f[ip.start:ip.end]) == build_tcp(seg, DST, SRC)
        assert parse_tcp(memoryview(f)[ip.start:ip.end], src=DST, dst=SRC) == seg


def test_rst_for_closed_state():
    assert rst_for(Segment(1, 2, 100, 0, RST, 0)) is None
    r = rst_for(Segment(1, 2, 100, 777, ACK, 0, b"abc"))
    assert (r.sport, r.dport, r.seq, r.flags) == (2, 1, 777, RST)
    r = rst_for(Segment(1, 2, 0xFFFFFFFF, 0, SYN, 0))
    assert (r.seq, r.ack, r.flags) == (0, 0, RST | ACK)
    r = rst_for(Segment(1, 2, 10, 0, FIN, 0, b"ab"))
    assert r.ack == 13


def test_fragment_and_reassemble_round_trip_any_order():
    b = Builder(GW, 1500)
    payload = os.urandom(9000)
    frags = b.udp(MAC, DST, SRC, 53, 1000, payload)
    assert len(frags) == 7 and all(len(f) <= 1514 for f in frags)
    random.Random(4).shuffle(frags)
    r = Reassembler()
    out = None
    for f in frags:
        got = r.add(f, ipv4.parse_ipv4(f, 14), 0.0)
        out = got or out
    assert out is not None and r.bytes == 0 and not r.parts
    p = packets.parse(out)
    assert not p.ip.is_fragment
    sport, dport, pl = udp.parse_udp(out, p.ip.start, p.ip.end, p.src, p.dst)
    assert bytes(pl) == payload


def test_reassembly_bounds_overlap_and_timeout():
    b = Builder(GW, 1500)
    frags = b.udp(MAC, DST, SRC, 53, 1000, os.urandom(5000))
    r = Reassembler(max_datagrams=2, timeout=30.0)
    r.add(frags[0], ipv4.parse_ipv4(frags[0], 14), 0.0)
    assert r.add(frags[0], ipv4.parse_ipv4(frags[0], 14), 0.0) is None  # duplicate = overlap
    assert r.counters["overlap"] == 1 and not r.parts
    r.add(frags[1], ipv4.parse_ipv4(frags[1], 14), 0.0)
    r.expire(31.0)
    assert r.counters["expired"] == 1 and r.bytes == 0
    for _ in range(5):  # three other datagrams: only two kept
        more = b.udp(MAC, DST, SRC, 53, 1000, os.urandom(3000))
        r.add(more[0], ipv4.parse_ipv4(more[0], 14), 40.0)
    assert len(r.parts) == 2 and r.counters["evicted"] == 3


# ---- fuzz: any frame parses or raises our errors; the service never dies -----------------

def _valid_frames():
    return [
        frame(17, udp.build_udp(SRC, DST, 1000, 9, b"hello")),
        frame(6, build_tcp(Segment(40000, 80, 1, 0, SYN, 65535, mss=1460, wscale=7, sack_perm=True, ts=(1, 0)), SRC, DST)),
        frame(6, build_tcp(Segment(40000, 80, 1, 5, ACK | PSH, 100, b"data"), SRC, DST)),
        frame(1, icmp.build_icmp(8, 0, 1, 2, b"ping")),
    ]


@st.composite
def mutated(draw):
    base = bytearray(draw(st.sampled_from(_valid_frames())))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 3))
        if op == 0 and base:
            base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
        elif op == 1:
            base = base[: draw(st.integers(0, len(base)))]
        elif op == 2:
            base += draw(st.binary(max_size=40))
        else:
            pos = draw(st.integers(14, max(14, len(base))))
            base[pos:pos] = draw(st.binary(max_size=8))
    return bytes(base)


@settings(max_examples=400, deadline=None)
@given(st.one_of(mutated(), st.binary(max_size=200)))
def test_fuzz_parse(data):
    try:
        p = packets.parse(data)
    except (FrameError, Unsupported):
        return
    assert p.ip.start <= p.ip.end <= len(data)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from test_flow_rig import Rig
    r = Rig(tmp_path_factory.mktemp("fuzzrun"), flow={"allow": ["192.168.65.254/32"]})
    yield r
    r.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(mutated(), st.binary(max_size=120)), max_size=5))
def test_fuzz_service_receive_path(rig, frames):
    """Random and mutated frames into the real adapter (only 127.0.0.1 is reachable): each
    is handled or dropped with a counter, never an exception, never an internal error."""
    frames = [ETH_HEADER.pack(rig.gw_mac, MAC, ETHERTYPE_IPV4) + f[14:] if len(f) >= 14 else f for f in frames]
    before = rig.svc.counters.get("frames_in", 0)
    rig.svc.on_frames(frames)
    rig.svc.loop.run_once(max_wait=0)
    rig.take()
    assert rig.svc.counters["frames_in"] == before + len(frames)
    assert "drop.internal_error" not in rig.svc.counters
    assert len(rig.svc.table) <= rig.svc.max_flows
