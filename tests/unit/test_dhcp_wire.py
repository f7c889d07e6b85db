"""DHCP wire format: byte vectors (busybox udhcpc, RFC 3396/3397/3442 examples), error messages,
and hypothesis (any bytes parse or raise DhcpError; encode -> parse round trips)."""
import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from wire import dhcp as w

MAC = bytes.fromhex("5254001234aa")

# A DISCOVER as busybox udhcpc 1.36 lays it out: BOOTP header, cookie, then options
# 53 (type), 61 (client id = htype 1 + MAC), 57 (max size 576), 55 (parameter list),
# 60 (vendor class), END, zero padding up to 300 bytes.
UDHCPC_DISCOVER = (
    bytes.fromhex("01010600" "1a2b3c4d" "0000" "0000")  # op htype hlen hops | xid | secs | flags
    + bytes(16)  # ciaddr yiaddr siaddr giaddr
    + MAC + bytes(10) + bytes(64) + bytes(128)  # chaddr, sname, file
    + bytes.fromhex("63825363")
    + bytes.fromhex("350101" "3d07015254001234aa" "39020240" "3707010306 0c0f1c2a".replace(" ", ""))
    + b"\x3c\x0cudhcp 1.36.1" + b"\xff"
)
UDHCPC_DISCOVER += bytes(300 - len(UDHCPC_DISCOVER))


def test_parse_udhcpc_discover_bytes():
    m = w.parse(UDHCPC_DISCOVER)
    assert (m.op, m.htype, m.hlen, m.hops, m.xid, m.secs, m.flags) == (1, 1, 6, 0, 0x1A2B3C4D, 0, 0)
    assert m.ciaddr == m.yiaddr == m.siaddr == m.giaddr == w.ZERO_IP
    assert m.mac == MAC and m.sname == b"" and m.file == b"" and not m.broadcast
    assert m.msg_type == w.DISCOVER
    assert w.decode_param_list(m.options[w.OPT_PARAM_LIST]) == [1, 3, 6, 12, 15, 28, 42]
    assert w.decode_client_id(m.options[w.OPT_CLIENT_ID]) == "01" + MAC.hex()
    assert m.max_message_size() == 576 - 28
    assert m.options[60] == b"udhcp 1.36.1"
    assert list(m.options) == [53, 61, 57, 55, 60]


def test_broadcast_flag_and_fields_round_trip():
    m = w.DhcpMessage(op=1, xid=7, secs=3, flags=w.FLAG_BROADCAST, ciaddr=bytes([10, 0, 0, 9]), chaddr=MAC,
                      sname=b"srv", file=b"boot.img", options={w.OPT_MSG_TYPE: b"\x03"})
    p = w.parse(m.encode())
    assert p.broadcast and p.secs == 3 and p.ciaddr == bytes([10, 0, 0, 9])
    assert p.sname == b"srv" and p.file == b"boot.img" and p.msg_type == w.REQUEST


def test_rfc3442_classless_vectors():
    gw = ipaddress.IPv4Address("10.0.0.1")
    cases = [("0.0.0.0/0", "00"), ("10.0.0.0/8", "080a"), ("10.17.0.0/16", "100a11"),
             ("10.27.129.0/24", "180a1b81"), ("10.229.0.128/25", "190ae50080"), ("10.198.122.47/32", "200ac67a2f")]
    for net, dest in cases:  # the RFC 3442 section 2 table of destination encodings
        route = [(ipaddress.IPv4Network(net), gw)]
        assert w.encode_classless(route) == bytes.fromhex(dest + "0a000001")
        assert w.decode_classless(w.encode_classless(route)) == route


def test_rfc3397_search_vector():
    # RFC 3397 section 3: "eng.apple.com." and "marketing.apple.com." with compression.
    enc = w.encode_search(["eng.apple.com", "marketing.apple.com."])
    assert enc == b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"
    assert w.decode_search(enc) == ["eng.apple.com", "marketing.apple.com"]
    assert w.encode_search(["", "a.b", "A.B"]) == b"\x01a\x01b\x00\xc0\x00"


def test_rfc3396_long_option_split_into_instances():
    value = bytes(range(256)) * 2 + bytes(88)  # 600 bytes
    enc = w.encode_option(w.OPT_SEARCH, value)
    assert enc[:2] == b"\x77\xff" and enc[257:259] == b"\x77\xff" and enc[514:516] == b"\x77\x5a"
    assert len(enc) == 600 + 6
    msg = w.DhcpMessage(options={w.OPT_MSG_TYPE: b"\x02", w.OPT_SEARCH: value})
    assert w.parse(msg.encode()).options[w.OPT_SEARCH] == value


def test_split_instances_concatenate_across_overloaded_fields():
    # options field: 52=3, 119 part 1; file: 119 part 2, 12; sname: 119 part 3 (RFC 3396 order)
    head = bytearray(w.DhcpMessage(op=1, chaddr=MAC).encode(min_size=0))[: w.BOOTP_LEN]
    file = (b"\x77\x02bc" + b"\x0c\x02vm" + b"\xff").ljust(128, b"\0")
    sname = b"\x77\x01d".ljust(64, b"\0")  # no END: the field just runs out
    head[w.FILE_OFFSET : w.FILE_OFFSET + 128] = file
    head[w.SNAME_OFFSET : w.SNAME_OFFSET + 64] = sname
    data = bytes(head) + w.MAGIC + b"\x34\x01\x03\x35\x01\x01\x77\x01a\xff"
    m = w.parse(data)
    assert m.options[w.OPT_SEARCH] == b"abcd" and m.options[w.OPT_HOSTNAME] == b"vm"
    assert m.file == b"" and m.sname == b"" and w.OPT_OVERLOAD not in m.options


def test_encode_spills_into_file_and_sname_when_too_big():
    search = w.encode_search([f"team{i}.corp.example.com" for i in range(30)])
    opts = {w.OPT_MSG_TYPE: b"\x02", w.OPT_SERVER_ID: bytes([10, 0, 0, 1]), w.OPT_SUBNET_MASK: b"\xff\xff\xff\0",
            w.OPT_SEARCH: search, w.OPT_DOMAIN: b"corp.example.com"}
    assert 240 + sum(len(v) + 2 for v in opts.values()) > 548 and len(search) < 255 + 128 + 64
    data = w.DhcpMessage(chaddr=MAC, options=dict(opts)).encode(max_size=548)
    assert len(data) <= 548
    assert data[240:246] == b"\x35\x01\x02\x34\x01\x01"  # type, then overload: file used
    m = w.parse(data)
    assert m.options == opts
    raw = w.DhcpMessage(chaddr=MAC, options=dict(opts)).encode()  # no limit: one field
    assert len(raw) > 548 and w.parse(raw).options == opts
    # if it cannot fit even with overload, it is sent whole rather than truncated
    huge = {**opts, w.OPT_SEARCH: search * 3}
    assert w.parse(w.DhcpMessage(options=huge).encode(max_size=548)).options == huge


@pytest.mark.parametrize("data, message", [
    (b"\x01" * 100, "too short"),
    (UDHCPC_DISCOVER[:236] + b"\0\0\0\0" + UDHCPC_DISCOVER[240:], "magic cookie"),
    (b"\x03" + UDHCPC_DISCOVER[1:], "bad op 3"),
    (UDHCPC_DISCOVER[:1] + b"\x06" + UDHCPC_DISCOVER[2:], "not ethernet"),
    (UDHCPC_DISCOVER[:240] + b"\x35\x01\x01", "no END"),
    (UDHCPC_DISCOVER[:240] + b"\x35", "no length byte"),
    (UDHCPC_DISCOVER[:240] + b"\x0c\x09abc", "says 9 bytes but only 3 remain"),
    (UDHCPC_DISCOVER[:240] + b"\x34\x01\x07\xff", "overload"),
])
def test_malformed_messages_say_what_is_wrong(data, message):
    with pytest.raises(w.DhcpError, match=message):
        w.parse(data)


def test_bad_option_values():
    m = w.parse(UDHCPC_DISCOVER[:240] + b"\x35\x01\x03\x32\x03abc\xff")
    with pytest.raises(w.DhcpError, match="must be 4 bytes"):
        m.ip_option(w.OPT_REQUESTED_IP)
    with pytest.raises(w.DhcpError, match="backwards"):
        w.decode_search(b"\x01a\xc0\x04\x00")
    with pytest.raises(w.DhcpError, match="backwards"):
        w.decode_search(b"\xc0\x00")  # a pointer to itself
    with pytest.raises(w.DhcpError, match="label type"):
        w.decode_search(b"\x41a\x00")
    with pytest.raises(w.DhcpError, match="past the end"):
        w.decode_search(b"\x05ab")
    with pytest.raises(w.DhcpError, match="prefix /33"):
        w.decode_classless(b"\x21\x0a\x00\x00\x00\x0a\x00\x00\x01")
    with pytest.raises(w.DhcpError, match="truncated"):
        w.decode_classless(b"\x18\x0a\x00")
    with pytest.raises(w.DhcpError, match="at least 2"):
        w.decode_client_id(b"\x01")
    with pytest.raises(ValueError):
        w.encode_search(["a" * 64 + ".com"])


def test_option_encoders():
    assert w.encode_ip("255.255.255.0") == b"\xff\xff\xff\x00"
    assert w.encode_ips(["10.0.0.1", "10.0.0.2"]) == bytes([10, 0, 0, 1, 10, 0, 0, 2])
    assert w.encode_u16(1500) == b"\x05\xdc" and w.encode_u32(3600) == b"\x00\x00\x0e\x10"
    assert w.encode_text("gangway.internal") == b"gangway.internal"
    assert w.encode_option(w.OPT_MSG_TYPE, w.encode_u8(w.OFFER)) == b"\x35\x01\x02"
    with pytest.raises(ValueError):
        w.encode_text("")


def test_fqdn_and_hostname_decoders():
    assert w.decode_fqdn(b"\x05\x00\x00\x03web\x07example\x03com\x00") == (5, "web.example.com")
    assert w.decode_fqdn(b"\x04\x00\x00\x03web") == (4, "web")  # partial name
    assert w.decode_fqdn(b"\x00\xff\xffweb.example.com") == (0, "web.example.com")  # ASCII form
    assert w.decode_hostname(b"vm1\0") == "vm1"
    with pytest.raises(w.DhcpError, match="at least 3"):
        w.decode_fqdn(b"\x04\x00")
    with pytest.raises(w.DhcpError, match="past the end"):
        w.decode_fqdn(b"\x04\x00\x00\x09web")
    assert w.decode_param_list(b"\x01\x03\x01\x00\xff\x79") == [1, 3, 121]


# -- hypothesis ------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_any_bytes_parse_or_raise_dhcperror(data):
    try:
        w.parse(data)
    except w.DhcpError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=128), st.binary(max_size=64))
def test_any_options_parse_or_raise_dhcperror(opts, file, sname):
    head = bytearray(UDHCPC_DISCOVER[: w.BOOTP_LEN])
    head[w.FILE_OFFSET : w.FILE_OFFSET + len(file)] = file
    head[w.SNAME_OFFSET : w.SNAME_OFFSET + len(sname)] = sname
    try:
        m = w.parse(bytes(head) + w.MAGIC + opts)
    except w.DhcpError:
        return
    for code in (w.OPT_REQUESTED_IP, w.OPT_SERVER_ID):
        try:
            m.ip_option(code)
        except w.DhcpError:
            pass
    for decoder, code in ((w.decode_search, 119), (w.decode_classless, 121), (w.decode_fqdn, 81),
                          (w.decode_client_id, 61)):
        if code in m.options:
            try:
                decoder(m.options[code])
            except w.DhcpError:
                pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_option_decoders_any_bytes(data):
    for decoder in (w.decode_search, w.decode_classless, w.decode_fqdn):
        try:
            decoder(data)
        except w.DhcpError:
            pass


option_codes = st.integers(1, 254).filter(lambda c: c != w.OPT_OVERLOAD)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(option_codes, st.binary(max_size=600), max_size=12),
       st.one_of(st.none(), st.integers(548, 1500)))
def test_encode_parse_round_trip(options, max_size):
    msg = w.DhcpMessage(op=2, xid=99, chaddr=MAC, options=dict(options))
    data = msg.encode(max_size=max_size)
    assert w.parse(data).options == {c: v for c, v in options.items()}
    if max_size is not None and 240 + sum(len(v) + 2 * (len(v) // 255 + 1) for v in options.values()) + 1 <= max_size:
        assert len(data) <= max(max_size, 300)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=10))
def test_classless_round_trip(raw):
    routes = [(ipaddress.IPv4Network((a, p), strict=False), ipaddress.IPv4Address(g)) for p, a, g in raw]
    assert w.decode_classless(w.encode_classless(routes)) == routes


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(labels, min_size=1, max_size=5).map(".".join), max_size=8))
def test_search_round_trip(names):
    assert w.decode_search(w.encode_search(names)) == names


def test_u16_struct_in_max_size():
    m = w.DhcpMessage(op=1, options={w.OPT_MSG_TYPE: b"\x01", w.OPT_MAX_SIZE: struct.pack("!H", 1500)})
    assert w.parse(m.encode()).max_message_size() == 1472
