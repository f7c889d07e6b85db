"""Byte-vector and property tests for ethernet, ARP, IPv4, UDP, ICMP and the checksum."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from wire import arp, checksum, icmp, ipv4, udp
from wire.ethernet import FrameError, build_eth, mac_bytes, mac_str, parse_eth

# An ARP request from a Linux guest 192.168.65.5 for 192.168.65.1 (as captured on a TAP).
ARP_REQUEST = bytes.fromhex(
    "ffffffffffff" "ce3b14b4cfb2" "0806"
    "0001080006040001" "ce3b14b4cfb2" "c0a84105" "000000000000" "c0a84101")

# ICMP echo request 192.168.65.5 -> 192.168.65.1, id 0x1234 seq 1, payload "abcdefgh".
ICMP_PACKET = bytes.fromhex("4500001c" "00004000" "4001" "0000" "c0a84105" "c0a84101")


def _ref_checksum(d: bytes) -> int:
    if len(d) % 2:
        d += b"\0"
    s = sum(int.from_bytes(d[i:i + 2], "big") for i in range(0, len(d), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def test_rfc1071_example():
    # RFC 1071 section 3 example bytes: 00 01 f2 03 f4 f5 f6 f7 -> sum ddf2, checksum 220d
    assert checksum.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


@given(st.binary(max_size=3000))
def test_checksum_matches_reference(data):
    assert checksum.checksum(data) == _ref_checksum(data)


def test_mac_roundtrip():
    assert mac_str(mac_bytes("5a:94:ef:e4:0c:dd")) == "5a:94:ef:e4:0c:dd"
    with pytest.raises(ValueError):
        mac_bytes("5a:94:ef")


def test_parse_arp_request():
    dst, src, etype, off = parse_eth(ARP_REQUEST)
    assert (dst, etype, off) == (b"\xff" * 6, 0x0806, 14)
    pkt = arp.parse_arp(ARP_REQUEST, off)
    assert pkt.op == arp.OP_REQUEST and pkt.tpa == bytes([192, 168, 65, 1]) and pkt.sha == src
    reply = arp.ArpPacket(arp.OP_REPLY, b"\x02" * 6, pkt.tpa, pkt.sha, pkt.spa)
    assert arp.parse_arp(bytes(reply)).op == arp.OP_REPLY


def test_ipv4_build_parse_roundtrip():
    payload = icmp.build_icmp(icmp.ECHO_REQUEST, 0, 0x1234, 1, b"abcdefgh")
    hdr = ipv4.build_ipv4(bytes([192, 168, 65, 5]), bytes([192, 168, 65, 1]), 1, len(payload))
    frame = build_eth(b"\x01" * 6, b"\x02" * 6, 0x0800, bytes(hdr) + payload + b"\0" * 6)  # padding
    ip = ipv4.parse_ipv4(frame, 14)
    assert ip.proto == 1 and ip.end - ip.start == len(payload)
    typ, code, ident, seq, data = icmp.parse_icmp(frame, ip.start, ip.end)
    assert (typ, code, ident, seq, bytes(data)) == (8, 0, 0x1234, 1, b"abcdefgh")


def test_ipv4_rejects_bad_checksum_and_lengths():
    hdr = bytearray(ipv4.build_ipv4(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 17, 8)) + bytes(8)
    hdr[10] ^= 0xFF
    with pytest.raises(FrameError, match="checksum"):
        ipv4.parse_ipv4(hdr, 0)
    short = ipv4.build_ipv4(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 17, 100)
    with pytest.raises(FrameError, match="total length"):
        ipv4.parse_ipv4(bytes(short) + bytes(8), 0)


def test_udp_roundtrip_and_checksum():
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    dgram = udp.build_udp(src, dst, 68, 67, b"hello")
    sport, dport, payload = udp.parse_udp(dgram, 0, len(dgram), src, dst)
    assert (sport, dport, bytes(payload)) == (68, 67, b"hello")
    bad = bytearray(dgram)
    bad[-1] ^= 1
    with pytest.raises(FrameError, match="checksum"):
        udp.parse_udp(bad, 0, len(bad), src, dst)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_parsers_raise_only_frame_error(data):
    for fn in (lambda: parse_eth(data), lambda: arp.parse_arp(data), lambda: ipv4.parse_ipv4(data, 0),
               lambda: udp.parse_udp(data, 0, len(data), b"\0" * 4, b"\0" * 4),
               lambda: icmp.parse_icmp(data, 0, len(data))):
        try:
            fn()
        except FrameError:
            pass


def test_unreachable_quotes_original():
    orig = bytes(ipv4.build_ipv4(b"\x01" * 4, b"\x02" * 4, 17, 8)) + struct.pack("!HHHH", 1000, 9, 8, 0)
    msg = icmp.build_unreachable(icmp.PORT_UNREACH, orig)
    typ, code, _, _, data = icmp.parse_icmp(msg, 0, len(msg))
    assert (typ, code) == (3, 3) and bytes(data) == orig
