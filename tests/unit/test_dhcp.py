"""DHCP wire format (byte vectors, hypothesis) and the lease logic with an injected clock."""
import ipaddress
import random
import struct

from hypothesis import given, settings, strategies as st

from engine.dhcp.server import DhcpConfig, DhcpServer, LeaseGranted, Nak, sanitize_hostname
from wire import dhcp as w

NET = ipaddress.IPv4Network("192.168.65.0/24")
GW = ipaddress.IPv4Address("192.168.65.1")
MAC = bytes.fromhex("5254001234aa")


def config(**kw):
    base = dict(subnet=NET, server_ip=GW, router=GW, dns_servers=[GW], domain_name="gangway.internal",
                search_domains=["gangway.internal", "corp.example"], mtu=1500, lease_time=3600,
                pool_start=ipaddress.IPv4Address("192.168.65.2"), pool_end=ipaddress.IPv4Address("192.168.65.253"),
                excluded=[ipaddress.IPv4Address("192.168.65.254")])
    base.update(kw)
    return DhcpConfig(**base)


def udhcpc_discover(mac=MAC, xid=0x1234, requested=None, hostname=None, flags=0) -> bytes:
    """A DISCOVER laid out the way busybox udhcpc sends it."""
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, flags, b"\0" * 4, b"\0" * 4,
                       b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"), b"", b"")
    opts = b"\x35\x01\x01" + b"\x3d\x07\x01" + mac + b"\x39\x02\x02\x40"
    if requested:
        opts += b"\x32\x04" + ipaddress.IPv4Address(requested).packed
    if hostname:
        opts += bytes((12, len(hostname))) + hostname
    opts += b"\x37\x07\x01\x03\x06\x0c\x0f\x1c\x2a" + b"\x3c\x0cudhcp 1.35.0" + b"\xff"
    return head + w.MAGIC + opts


def request(mac=MAC, xid=0x1234, requested=None, server=GW, ciaddr=b"\0" * 4, hostname=None) -> bytes:
    msg = w.DhcpMessage(op=1, xid=xid, chaddr=mac, ciaddr=ciaddr, options={w.OPT_MSG_TYPE: bytes((w.REQUEST,))})
    if requested:
        msg.options[w.OPT_REQUESTED_IP] = ipaddress.IPv4Address(requested).packed
    if server:
        msg.options[w.OPT_SERVER_ID] = server.packed
    if hostname:
        msg.options[w.OPT_HOSTNAME] = hostname
    msg.op = 1
    return msg.encode()


def simple(mtype, mac=MAC, **kw) -> bytes:
    msg = w.DhcpMessage(op=1, xid=1, chaddr=mac, options={w.OPT_MSG_TYPE: bytes((mtype,))}, **kw)
    return msg.encode()


def test_parse_udhcpc_discover():
    m = w.parse(udhcpc_discover(hostname=b"web"))
    assert m.msg_type == w.DISCOVER and m.mac == MAC and m.xid == 0x1234
    assert m.options[w.OPT_PARAM_LIST] == bytes([1, 3, 6, 12, 15, 28, 42])
    assert m.options[w.OPT_HOSTNAME] == b"web"


def test_rfc3442_and_rfc3397_vectors():
    # RFC 3442 examples: 10.17.0.0/16 via 10.0.0.1 -> 16 10 17 10 0 0 1 ; 0/0 -> 0 + router
    routes = [(ipaddress.IPv4Network("10.17.0.0/16"), ipaddress.IPv4Address("10.0.0.1")),
              (ipaddress.IPv4Network("10.27.129.0/24"), ipaddress.IPv4Address("10.0.0.1")),
              (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("10.0.0.1"))]
    enc = w.encode_classless(routes)
    assert enc == bytes([16, 10, 17, 10, 0, 0, 1, 24, 10, 27, 129, 10, 0, 0, 1, 0, 10, 0, 0, 1])
    assert w.decode_classless(enc) == routes
    # RFC 3397 section 3 example: eng.apple.com, marketing.apple.com
    enc = w.encode_search(["eng.apple.com", "marketing.apple.com"])
    assert enc == b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"
    assert w.decode_search(enc) == ["eng.apple.com", "marketing.apple.com"]


def test_long_option_split_and_concatenated():
    msg = w.DhcpMessage(op=2, options={w.OPT_MSG_TYPE: b"\x02", w.OPT_SEARCH: b"x" * 600})
    data = msg.encode()
    assert w.parse(data).options[w.OPT_SEARCH] == b"x" * 600


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_dhcperror(data):
    try:
        w.parse(data)
    except w.DhcpError:
        pass
    srv = DhcpServer(config())
    assert srv.handle(data, 0.0) is None or True


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=80))
def test_server_never_raises_on_mutated_options(tail):
    base = udhcpc_discover()[: w.BOOTP_LEN + 4]
    DhcpServer(config()).handle(base + tail, 0.0)


def dora(srv, mac=MAC, now=0.0, hostname=None):
    offer = srv.handle(udhcpc_discover(mac, hostname=hostname), now)
    ip = ipaddress.IPv4Address(w.parse(offer.data).yiaddr)
    ack = srv.handle(request(mac, requested=ip, hostname=hostname), now)
    return w.parse(ack.data), ack


def test_discover_offer_request_ack_with_options():
    srv = DhcpServer(config(classless_routes=[(ipaddress.IPv4Network("10.9.0.0/16"), GW)]))
    offer = srv.handle(udhcpc_discover(hostname=b"Web_01.local"), 0.0)
    m = w.parse(offer.data)
    assert m.msg_type == w.OFFER and offer.dst_mac == "52:54:00:12:34:aa"
    ack, reply = dora(srv, hostname=b"Web_01.local")
    o = ack.options
    assert ack.msg_type == w.ACK and ack.yiaddr == m.yiaddr
    assert o[w.OPT_SUBNET_MASK] == b"\xff\xff\xff\x00" and o[w.OPT_ROUTER] == GW.packed
    assert o[w.OPT_DNS] == GW.packed and o[w.OPT_MTU] == b"\x05\xdc"
    assert struct.unpack("!I", o[w.OPT_LEASE_TIME])[0] == 3600
    assert w.decode_search(o[w.OPT_SEARCH]) == ["gangway.internal", "corp.example"]
    routes = w.decode_classless(o[w.OPT_CLASSLESS])
    assert (ipaddress.IPv4Network("0.0.0.0/0"), GW) in routes
    granted = [e for e in srv.events() if isinstance(e, LeaseGranted)]
    assert granted and granted[0].hostname == "web-01"


def test_renew_rebind_reboot_release_decline():
    srv = DhcpServer(config())
    ack, _ = dora(srv)
    ip = ack.yiaddr
    # renew (unicast, ciaddr set, no server id or requested ip)
    r = srv.handle(request(ciaddr=ip, server=None), 1800.0)
    assert w.parse(r.data).msg_type == w.ACK and r.dst_ip == str(ipaddress.IPv4Address(ip))
    # init-reboot with a wrong address -> NAK
    r = srv.handle(request(requested="10.0.0.5", server=None), 1900.0)
    assert w.parse(r.data).msg_type == w.NAK and r.dst_ip == "255.255.255.255"
    # another client asking for our address -> NAK
    r = srv.handle(request(mac=b"\x52\x54\0\0\0\x01", requested=ipaddress.IPv4Address(ip), server=None), 1900.0)
    assert w.parse(r.data).msg_type == w.NAK
    # release, then the same client gets the same address again
    srv.handle(simple(w.RELEASE, ciaddr=ip), 2000.0)
    assert srv.leases()[0]["state"] == "released"
    assert w.parse(srv.handle(udhcpc_discover(), 2001.0).data).yiaddr == ip
    # decline: the address is quarantined and the client gets another one
    msg = w.DhcpMessage(op=1, xid=2, chaddr=MAC, options={w.OPT_MSG_TYPE: bytes((w.DECLINE,)), w.OPT_REQUESTED_IP: ip})
    srv.handle(msg.encode(), 2002.0)
    assert w.parse(srv.handle(udhcpc_discover(), 2003.0).data).yiaddr != ip


def test_inform_and_other_server():
    srv = DhcpServer(config())
    r = srv.handle(simple(w.INFORM, ciaddr=bytes([192, 168, 65, 77])), 0.0)
    m = w.parse(r.data)
    assert m.msg_type == w.ACK and m.yiaddr == b"\0\0\0\0" and w.OPT_LEASE_TIME not in m.options
    srv.handle(udhcpc_discover(), 0.0)
    assert srv.handle(request(requested="192.168.65.2", server=ipaddress.IPv4Address("192.168.65.9")), 0.0) is None
    assert srv.leases() == []


def test_static_lease_and_excluded_addresses():
    srv = DhcpServer(config(static_leases={"52:54:00:12:34:aa": ipaddress.IPv4Address("192.168.65.10")}))
    ack, _ = dora(srv)
    assert ack.yiaddr == bytes([192, 168, 65, 10])
    other, _ = dora(srv, mac=b"\x52\x54\0\0\0\x02")
    assert other.yiaddr not in (bytes([192, 168, 65, 10]), bytes([192, 168, 65, 1]), bytes([192, 168, 65, 254]))


def test_same_address_after_snapshot_restore():
    srv = DhcpServer(config())
    ack, _ = dora(srv, hostname=b"db")
    srv2 = DhcpServer.restore(config(), srv.snapshot(), 100.0)
    assert w.parse(srv2.handle(udhcpc_discover(), 100.0).data).yiaddr == ack.yiaddr
    assert srv2.leases()[0]["hostname"] == "db"


def test_discover_flood_does_not_starve_known_guest():
    srv = DhcpServer(config(max_leases=300, offer_timeout=30))
    known, _ = dora(srv)
    rng = random.Random(7)
    for i in range(10000):
        srv.handle(udhcpc_discover(mac=bytes([2] + [rng.randrange(256) for _ in range(5)])), 1.0 + i * 0.001)
        assert len(srv.by_ip) <= 300
    new_mac = b"\x52\x54\0\0\0\x99"
    # pool is full of offers for now; once they time out a newcomer gets an address
    later = srv.handle(udhcpc_discover(mac=new_mac), 100.0)
    assert later is not None
    # the known guest keeps its address throughout
    r = srv.handle(request(ciaddr=known.yiaddr, server=None), 100.0)
    assert w.parse(r.data).msg_type == w.ACK and w.parse(r.data).yiaddr == known.yiaddr


def test_lease_expiry_frees_address_for_others():
    srv = DhcpServer(config(pool_start=ipaddress.IPv4Address("192.168.65.2"),
                            pool_end=ipaddress.IPv4Address("192.168.65.2"), lease_time=60))
    dora(srv)
    assert srv.handle(udhcpc_discover(mac=b"\x52\x54\0\0\0\x05"), 10.0) is None
    srv.expire(61.0)
    assert w.parse(srv.handle(udhcpc_discover(mac=b"\x52\x54\0\0\0\x05"), 61.0).data).yiaddr == bytes([192, 168, 65, 2])


def test_sanitize_hostname():
    assert sanitize_hostname(b"My Host.example.com") == "my-host"
    assert sanitize_hostname(b"--x--\0junk") == "x"
    assert sanitize_hostname(b"\xff\xfe") == ""
