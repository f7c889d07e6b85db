"""Software segmentation of TCP super-frames and virtio_net_hdr handling."""
import struct

from hypothesis import given, settings, strategies as st

from wire import gso, ipv4, vnet
from wire.checksum import checksum, pseudo_ipv4
from wire.ethernet import build_eth

SRC, DST = bytes([192, 168, 65, 1]), bytes([192, 168, 65, 5])


def tcp_frame(payload: bytes, seq: int = 0xFFFFFF00, flags: int = 0x18) -> bytes:
    tcp = bytearray(struct.pack("!HHIIBBHHH", 80, 40000, seq, 1, 5 << 4, flags, 65535, 0, 0)) + payload
    struct.pack_into("!H", tcp, 16, checksum(tcp, pseudo_ipv4(SRC, DST, 6, len(tcp))))
    ip = ipv4.build_ipv4(SRC, DST, 6, len(tcp), ident=7)
    return build_eth(b"\x02" * 6, b"\x04" * 6, 0x0800, bytes(ip) + bytes(tcp))


def _check_tcp(frame):
    ip = ipv4.parse_ipv4(frame, 14)
    seg = memoryview(frame)[ip.start:ip.end]
    assert checksum(seg, pseudo_ipv4(SRC, DST, 6, len(seg))) == 0
    seq, flags = struct.unpack_from("!I", seg, 4)[0], seg[13]
    return seq, flags, bytes(seg[20:])


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=65000 - 60), st.sampled_from([576, 1500, 9000]))
def test_segment_preserves_stream(n, mtu):
    payload = bytes(i % 251 for i in range(n))
    frame = tcp_frame(payload, flags=0x19)  # FIN|PSH|ACK
    pieces = gso.segment(frame, mtu)
    data = b""
    expect_seq = 0xFFFFFF00
    for i, p in enumerate(pieces):
        assert len(p) <= mtu + 14
        seq, flags, chunk = _check_tcp(p)
        assert seq == expect_seq
        last = i == len(pieces) - 1
        assert bool(flags & 0x01) == last and bool(flags & 0x08) == last
        expect_seq = (expect_seq + len(chunk)) & 0xFFFFFFFF
        data += chunk
    assert data == payload


def test_vnet_decode_completes_partial_checksum():
    frame = bytearray(tcp_frame(b"x" * 100))
    l4 = 34
    # as a kernel with TUN_F_CSUM hands it over: the field holds the folded pseudo-header sum
    vnet.gso_checksum_field(frame)
    hdr = vnet.VNET.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, l4, 16)
    out, partial = vnet.decode(hdr + bytes(frame))
    assert not partial
    _check_tcp(out)
    kept, partial = vnet.decode(hdr + bytes(frame), keep_partial_tcp4=True)
    assert partial and bytes(kept) == bytes(frame)


def test_vnet_header_for_large_tcp_is_gso():
    frame = tcp_frame(b"y" * 30000)
    flags, gtype, hdr_len, gso_size, _, _ = vnet.VNET.unpack(vnet.encode_header(frame, 1500))
    assert gtype == vnet.GSO_TCPV4 and hdr_len == 54 and gso_size == 1460
    assert vnet.encode_header(tcp_frame(b"z" * 100), 1500) == vnet.PLAIN


def _partial(frame: bytes) -> bytearray:
    f = bytearray(frame)
    vnet.gso_checksum_field(f)  # what a kernel (or flow) leaves: the pseudo-header sum
    return f


def test_partial_frames_complete_to_the_real_checksum():
    full = tcp_frame(b"p" * 999)
    part = _partial(full)
    assert bytes(part) != full
    assert vnet.complete_partial(part) == full
    assert vnet.is_partial_tcp4(part, 34, 16) and not vnet.is_partial_tcp4(part, 34, 6)


def test_partial_header_for_tap():
    small = _partial(tcp_frame(b"s" * 100))
    flags, gtype, _, _, start, off = vnet.VNET.unpack(vnet.encode_header_partial(small, 1500))
    assert (flags, gtype, start, off) == (vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 34, 16)
    big = _partial(tcp_frame(b"b" * 40000))
    flags, gtype, hdr_len, gso_size, start, off = vnet.VNET.unpack(vnet.encode_header_partial(big, 1500))
    assert (flags, gtype, hdr_len, gso_size, start, off) == (vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1460, 34, 16)


def test_segmenting_a_partial_super_frame_gives_real_checksums():
    payload = bytes(range(256)) * 100
    for piece in gso.segment(_partial(tcp_frame(payload)), 1500):
        _check_tcp(piece)


def test_jumbo_link_still_uses_gso_with_1500_byte_segments():
    frame = tcp_frame(b"j" * 60000)
    _, gtype, _, gso_size, _, _ = vnet.VNET.unpack(vnet.encode_header(frame, 65520))
    assert gtype == vnet.GSO_TCPV4 and gso_size == 1460
    _, gtype, _, gso_size, _, _ = vnet.VNET.unpack(vnet.encode_header_partial(_partial(frame), 65520))
    assert gtype == vnet.GSO_TCPV4 and gso_size == 1460
    # a large UDP datagram on a jumbo link is a plain frame; above the MTU it is refused
    udp = build_eth(b"\x02" * 6, b"\x04" * 6, 0x0800, bytes(ipv4.build_ipv4(SRC, DST, 17, 9000)) + bytes(9000))
    assert vnet.encode_header(udp, 65520) == vnet.PLAIN
    import pytest
    from wire.ethernet import FrameError
    with pytest.raises(FrameError):
        vnet.encode_header(udp, 1500)
