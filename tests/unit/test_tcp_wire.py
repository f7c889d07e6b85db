"""wire.tcp: byte vectors, options, checksums, fuzzing."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.checksum import checksum, pseudo_ipv4
from wire.tcp import (ACK, FIN, PSH, RST, SYN, Segment, TcpError, build_options, build_tcp,
                      parse_tcp)

# A Linux 2.6 SYN (IPv4 header + TCP), 192.168.1.140:56760 -> 192.168.1.194:23
LINUX_SYN = bytes.fromhex(
    "4510003c41304000400674ddc0a8018cc0a801c2"
    "ddb80017dacf21d500000000a00216d071100000"
    "020405b40402080a002760e50000000001030307")
# A SYN-ACK with NOP padding (MSS, NOP NOP SACK-perm, NOP WS)
SYNACK = bytes.fromhex(
    "450000340000400033066e098c635daf0affe4a9"
    "00500f2cff15564ebabd6b49801216d0f3dc0000020405640101040201030309")

A4 = bytes([10, 0, 2, 15])
B4 = bytes([93, 184, 216, 34])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")


def split(pkt):
    return pkt[20:], pkt[12:16], pkt[16:20]


def test_linux_syn_parses_and_verifies():
    tcp, src, dst = split(LINUX_SYN)
    s = parse_tcp(tcp, src=src, dst=dst)
    assert (s.sport, s.dport) == (56760, 23)
    assert s.seq == 0xDACF21D5 and s.ack == 0
    assert s.flags == SYN and s.window == 5840
    assert s.mss == 1460 and s.wscale == 7 and s.sack_perm
    assert s.ts == (0x002760E5, 0)
    assert s.sack == [] and len(s.payload) == 0 and s.seg_len == 1


def test_linux_syn_rebuilds_byte_for_byte():
    tcp, src, dst = split(LINUX_SYN)
    assert build_tcp(parse_tcp(tcp, src=src, dst=dst), src, dst) == tcp


def test_synack_with_nops():
    tcp, src, dst = split(SYNACK)
    s = parse_tcp(tcp, src=src, dst=dst)
    assert s.flags == SYN | ACK and s.mss == 1380 and s.wscale == 9 and s.sack_perm
    assert s.ts is None
    assert build_tcp(s, src, dst) == tcp


def test_bad_checksum_detected_and_verify_off():
    tcp, src, dst = split(LINUX_SYN)
    bad = bytearray(tcp)
    bad[4] ^= 1
    with pytest.raises(TcpError, match="checksum"):
        parse_tcp(bad, src=src, dst=dst)
    parse_tcp(bad, src=src, dst=dst, verify=False)
    parse_tcp(bad)  # no addresses: no verification


def test_payload_is_zero_copy_memoryview():
    seg = Segment(1, 2, 3, 4, ACK | PSH, 100, b"hello world", ts=(5, 6))
    raw = bytearray(build_tcp(seg, A4, B4))
    p = parse_tcp(raw, src=A4, dst=B4)
    assert isinstance(p.payload, memoryview) and bytes(p.payload) == b"hello world"
    raw[-1] = ord("D")
    assert bytes(p.payload) == b"hello worlD"


@pytest.mark.parametrize("src,dst", [(A4, B4), (A6, B6)])
def test_roundtrip_all_options(src, dst):
    seg = Segment(40000, 443, 0xFFFFFFF0, 0x10, SYN | ACK | ACK, 65535, bytes(range(7)),
                  mss=1460, wscale=14, sack_perm=True, ts=(0xFFFFFFFF, 1))
    raw = build_tcp(seg, src, dst)
    assert (raw[12] >> 4) * 4 == 20 + 20
    assert parse_tcp(raw, src=src, dst=dst) == seg


def test_odd_payload_checksum_matches_reference():
    seg = Segment(1, 2, 3, 4, ACK, 5, b"abc")
    raw = build_tcp(seg, A4, B4)
    zeroed = raw[:16] + b"\0\0" + raw[18:]
    assert struct.unpack_from("!H", raw, 16)[0] == checksum(
        zeroed, pseudo_ipv4(A4, B4, 6, len(raw)))


def test_sack_blocks_roundtrip_and_limit():
    blocks = [(i * 100, i * 100 + 50) for i in range(1, 6)]
    seg = Segment(1, 2, 3, 4, ACK, 5, ts=(1, 2), sack=blocks)
    p = parse_tcp(build_tcp(seg, A4, B4), src=A4, dst=B4)
    assert p.sack == blocks[:3]  # 12 bytes of TS leave room for 3 blocks
    seg.ts = None
    p = parse_tcp(build_tcp(seg, A4, B4), src=A4, dst=B4)
    assert p.sack == blocks[:4]
    assert len(build_options(seg)) <= 40


def test_timestamp_fast_path_and_data_segment():
    # Linux data segment: NOP NOP TS
    seg = Segment(22, 40000, 1, 2, ACK | PSH, 501, b"x" * 10, ts=(111, 222))
    raw = build_tcp(seg, A4, B4)
    assert raw[20:24] == b"\x01\x01\x08\x0a"
    p = parse_tcp(raw, src=A4, dst=B4)
    assert p.ts == (111, 222) and p.mss is None and not p.sack_perm


def _with_options(opts: bytes, payload=b"") -> bytes:
    assert len(opts) % 4 == 0
    hlen = 20 + len(opts)
    return struct.pack("!HHIIHHHH", 1, 2, 3, 4, ((hlen // 4) << 12) | ACK, 5, 0, 0) + opts + payload


def test_unknown_option_skipped_and_eol_stops():
    p = parse_tcp(_with_options(b"\x1e\x06abcd\x01\x01" + b"\x02\x04\x05\xb4" + b"\x00\x05\x00\x00"))
    assert p.mss == 1460 and p.sack == []


@pytest.mark.parametrize("opts", [
    b"\x01\x01\x02\x04",        # MSS cut by the header end
    b"\x02\x00\x00\x00",        # zero length
    b"\x02\x01\x00\x00",        # length 1
    b"\x02\x08\x00\x00",        # runs past header
    b"\x02\x03\x05\x00",        # MSS with wrong length
    b"\x03\x04\x07\x00",        # WS with wrong length
    b"\x04\x03\x00\x00",        # SACK-perm with wrong length
    b"\x05\x02\x00\x00",        # SACK with no block
    b"\x05\x06\x00\x00\x00\x00",  # SACK not a multiple of 8
    b"\x08\x08\x00\x00\x00\x00\x00\x00",  # TS wrong length
    b"\x01\x01\x01\x02",        # kind 2 without length byte
])
def test_malformed_options_raise(opts):
    opts = opts + b"\x01" * (-len(opts) % 4)
    with pytest.raises(TcpError):
        parse_tcp(_with_options(opts))


def test_bad_offsets_raise():
    with pytest.raises(TcpError):
        parse_tcp(b"\0" * 19)
    hdr = bytearray(_with_options(b""))
    hdr[12] = 4 << 4
    with pytest.raises(TcpError):
        parse_tcp(hdr)
    hdr[12] = 6 << 4  # 24 bytes claimed, 20 present
    with pytest.raises(TcpError):
        parse_tcp(hdr)


def test_flag_constants():
    assert (FIN, SYN, RST, PSH, ACK) == (1, 2, 4, 8, 16)
    assert Segment(flags=SYN | ACK).flag_str() == "S."


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_parse_or_tcperror(data):
    try:
        s = parse_tcp(data)
    except TcpError:
        return
    assert 0 <= s.window <= 0xFFFF and len(s.payload) <= len(data) - 20


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=20), st.binary(max_size=40), st.binary(max_size=30))
def test_fuzz_options_parse_or_tcperror(hdr, opts, payload):
    opts = opts + b"\x00" * (-len(opts) % 4)
    hlen = 20 + len(opts)
    raw = bytearray(hdr) + opts + payload
    raw[12] = (hlen // 4) << 4
    try:
        parse_tcp(raw)
    except TcpError:
        pass


seg_strategy = st.builds(
    Segment,
    st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 65535),
    st.binary(max_size=64),
    mss=st.none() | st.integers(0, 65535), wscale=st.none() | st.integers(0, 14),
    sack_perm=st.booleans(),
    ts=st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    sack=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                  max_size=2))


@settings(max_examples=200, deadline=None)
@given(seg_strategy, st.booleans())
def test_build_parse_roundtrip(seg, v6):
    src, dst = (A6, B6) if v6 else (A4, B4)
    assert parse_tcp(build_tcp(seg, src, dst), src=src, dst=dst) == seg
