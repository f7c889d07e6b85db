"""DhcpServer lease logic with an injected clock: DORA, renew, rebind, reboot, release, decline,
inform, static leases, persistence, floods and bounds; hypothesis for hostile input."""
import ipaddress
import random

from hypothesis import given, settings, strategies as st

from engine.dhcp.server import (DhcpConfig, DhcpServer, LeaseDeclined, LeaseExpired, LeaseGranted, LeaseReleased,
                                Nak, Offered, sanitize_hostname)
from gangway.statefile import read_json, write_json
from tests.unit.test_dhcp_wire import UDHCPC_DISCOVER
from wire import dhcp as w

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network("192.168.65.0/24")
GW = IP("192.168.65.1")
MAC = bytes.fromhex("5254001234aa")
MAC_S = "52:54:00:12:34:aa"
OTHER = bytes.fromhex("525400000002")


def config(**kw):
    base = dict(subnet=NET, server_ip=GW, router=GW, dns_servers=[GW], domain_name="gangway.internal",
                search_domains=["gangway.internal"], mtu=1500, lease_time=3600, pool_start=IP("192.168.65.2"),
                pool_end=IP("192.168.65.253"), excluded=[IP("192.168.65.254")])
    base.update(kw)
    return DhcpConfig(**base)


def msg(mtype, mac=MAC, xid=0x42, flags=0, ciaddr=w.ZERO_IP, requested=None, server=None, hostname=None,
        prl=None, **options) -> bytes:
    opts = {w.OPT_MSG_TYPE: bytes((mtype,))}
    if requested is not None:
        opts[w.OPT_REQUESTED_IP] = IP(requested).packed
    if server is not None:
        opts[w.OPT_SERVER_ID] = IP(server).packed
    if hostname is not None:
        opts[w.OPT_HOSTNAME] = hostname
    if prl is not None:
        opts[w.OPT_PARAM_LIST] = bytes(prl)
    opts.update({int(k[1:]): v for k, v in options.items()})
    return w.DhcpMessage(op=1, xid=xid, flags=flags, chaddr=mac, ciaddr=IP(ciaddr).packed if ciaddr != w.ZERO_IP
                         else w.ZERO_IP, options=opts).encode()


def discover(srv, now, mac=MAC, **kw):
    r = srv.handle(msg(w.DISCOVER, mac, **kw), now)
    return r, (w.parse(r.data) if r else None)


def dora(srv, now=0.0, mac=MAC, **kw) -> IP:
    r, offer = discover(srv, now, mac, **kw)
    assert offer.msg_type == w.OFFER
    ip = IP(offer.yiaddr)
    r = srv.handle(msg(w.REQUEST, mac, requested=ip, server=srv.cfg.server_ip, **kw), now)
    ack = w.parse(r.data)
    assert ack.msg_type == w.ACK and IP(ack.yiaddr) == ip
    return ip


def reply_type(reply):
    return None if reply is None else w.parse(reply.data).msg_type


# -- the exchanges ---------------------------------------------------------------------------
def test_offer_to_udhcpc_encodes_options_exactly():
    srv = DhcpServer(config(search_domains=["eng.apple.com", "marketing.apple.com"],
                            classless_routes=[(ipaddress.IPv4Network("10.17.0.0/16"), GW)]))
    r = srv.handle(UDHCPC_DISCOVER, 5.0)
    assert (r.dst_ip, r.dst_mac, r.msg_type) == ("192.168.65.2", MAC_S, w.OFFER)  # broadcast flag clear
    data = r.data
    assert data[:4] == b"\x02\x01\x06\x00" and data[4:8] == bytes.fromhex("1a2b3c4d")
    assert data[16:20] == bytes([192, 168, 65, 2]) and data[20:24] == GW.packed  # yiaddr, siaddr
    assert data[28:34] == MAC and data[236:240] == w.MAGIC
    expected = bytes.fromhex(
        "350102" "3604c0a84101"  # type OFFER, server id
        "0104ffffff00" "0304c0a84101" "0604c0a84101"  # asked for: mask, router, DNS
        "0f10") + b"gangway.internal" + bytes.fromhex(  # domain (asked for; 12 and 42 we lack)
        "1c04c0a841ff"  # broadcast (asked for)
        "771b") + b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04" + bytes.fromhex(  # RFC 3397
        "1a0205dc" "330400000e10" "3a0400000708" "3b0400000c4e"  # MTU, lease, T1, T2
        "790c" "100a11c0a84101" "00c0a84101"  # RFC 3442: 10.17/16 and the default route via GW
        "3d07015254001234aa"  # client id echoed (RFC 6842)
        "ff")
    assert data[240:] == expected  # over 300 bytes: no padding
    assert srv.counters["offers"] == 1


def test_dora_with_events_hostname_and_addressing():
    srv = DhcpServer(config())
    r, offer = discover(srv, 0.0, flags=w.FLAG_BROADCAST, hostname=b"Web_01.local")
    assert (r.dst_ip, r.dst_mac) == ("255.255.255.255", "ff:ff:ff:ff:ff:ff")
    ip = IP(offer.yiaddr)
    assert srv.events() == [Offered(MAC_S, str(ip))]
    assert srv.leases()[0]["state"] == "offered"
    r = srv.handle(msg(w.REQUEST, requested=ip, server=GW, flags=w.FLAG_BROADCAST), 1.0)
    ack = w.parse(r.data)
    assert ack.msg_type == w.ACK and IP(ack.yiaddr) == ip and ack.ciaddr == w.ZERO_IP
    assert r.dst_ip == "255.255.255.255"
    assert srv.events() == [LeaseGranted(MAC_S, str(ip), "web-01", 3601.0)]  # hostname kept from DISCOVER
    assert srv.leases() == [{"mac": MAC_S, "ip": str(ip), "state": "bound", "expires": 3601.0,
                             "hostname": "web-01", "client_id": ""}]
    assert srv.next_expiry() == 3601.0


def test_parameter_request_list_order_and_essentials():
    srv = DhcpServer(config(classless_routes=[(ipaddress.IPv4Network("10.9.0.0/16"), IP("192.168.65.3"))]))
    _, offer = discover(srv, 0.0, prl=[121, 6, 3, 51])
    codes = list(offer.options)
    assert codes[:6] == [53, 54, 121, 6, 3, 51]
    assert set(codes) >= {1, 3, 6, 15, 119, 26, 51, 54, 58, 59, 121}
    routes = w.decode_classless(offer.options[121])
    assert routes == [(ipaddress.IPv4Network("10.9.0.0/16"), IP("192.168.65.3")),
                      (ipaddress.IPv4Network("0.0.0.0/0"), GW)]


def test_no_classless_option_unless_configured():
    _, offer = discover(DhcpServer(config()), 0.0)
    assert 121 not in offer.options and offer.options[3] == GW.packed


def test_requested_address_honoured_when_free():
    srv = DhcpServer(config())
    _, offer = discover(srv, 0.0, requested="192.168.65.77")
    assert IP(offer.yiaddr) == IP("192.168.65.77")
    for bad in ("192.168.65.1", "192.168.65.254", "10.0.0.5", "192.168.65.255"):
        _, offer = discover(srv, 0.0, mac=OTHER, requested=bad)
        assert IP(offer.yiaddr) != IP(bad)


def test_renew_unicast_and_rebind_extend_the_lease():
    srv = DhcpServer(config())
    ip = dora(srv)
    srv.events()
    r = srv.handle(msg(w.REQUEST, ciaddr=ip), 1800.0)  # RENEWING: unicast, ciaddr, no 50/54
    ack = w.parse(r.data)
    assert ack.msg_type == w.ACK and IP(ack.yiaddr) == ip and IP(ack.ciaddr) == ip
    assert (r.dst_ip, r.dst_mac) == (str(ip), MAC_S)
    assert srv.events()[0].expires == 5400.0
    r = srv.handle(msg(w.REQUEST, ciaddr=ip, flags=w.FLAG_BROADCAST), 5000.0)  # REBINDING
    assert reply_type(r) == w.ACK and r.dst_ip == str(ip)  # ciaddr set: unicast per RFC 2131 4.1
    assert srv.lease_for(MAC_S).expires == 8600.0


def test_init_reboot():
    srv = DhcpServer(config())
    ip = dora(srv)
    r = srv.handle(msg(w.REQUEST, requested=ip), 100.0)  # its own address: ACK
    assert reply_type(r) == w.ACK
    r = srv.handle(msg(w.REQUEST, requested="10.0.0.5"), 101.0)  # another network
    assert reply_type(r) == w.NAK and (r.dst_ip, r.dst_mac) == ("255.255.255.255", "ff:ff:ff:ff:ff:ff")
    nak = w.parse(r.data)
    assert nak.yiaddr == w.ZERO_IP and nak.options[w.OPT_SERVER_ID] == GW.packed
    assert b"not on" in nak.options[w.OPT_MESSAGE]
    r = srv.handle(msg(w.REQUEST, requested="192.168.65.99"), 102.0)  # not the address bound to it
    assert reply_type(r) == w.NAK
    r = srv.handle(msg(w.REQUEST, OTHER, requested=ip), 103.0)  # another client's address
    assert reply_type(r) == w.NAK
    assert [type(e) for e in srv.events()].count(Nak) == 3 and srv.counters["naks"] == 3
    assert srv.lease_for(MAC_S).ip == ip  # a NAK changes nothing
    # a client we do not know, rebooting with a free address: we are authoritative, ACK
    r = srv.handle(msg(w.REQUEST, OTHER, requested="192.168.65.50"), 104.0)
    assert reply_type(r) == w.ACK


def test_renew_after_expiry_and_reuse_by_another_is_nak():
    srv = DhcpServer(config(pool_end=IP("192.168.65.2")))
    ip = dora(srv)
    srv.expire(3600.0)
    assert [type(e) for e in srv.events()][-1] is LeaseExpired
    assert srv.leases()[0]["state"] == "expired"
    assert dora(srv, 3700.0, mac=OTHER) == ip  # the only address goes to someone else
    assert reply_type(srv.handle(msg(w.REQUEST, ciaddr=ip), 3800.0)) == w.NAK
    assert srv.handle(msg(w.DISCOVER), 3801.0) is None and srv.counters["drop.no_address"] == 1


def test_selecting_another_server_withdraws_our_offer():
    srv = DhcpServer(config(pool_end=IP("192.168.65.2")))
    _, offer = discover(srv, 0.0)
    assert discover(srv, 0.0, mac=OTHER)[0] is not None  # the only address: reclaimed from the offer
    srv2 = DhcpServer(config(pool_end=IP("192.168.65.2")))
    discover(srv2, 0.0)
    assert srv2.handle(msg(w.REQUEST, requested=offer.yiaddr, server="192.168.65.9"), 1.0) is None
    assert srv2.counters["drop.other_server"] == 1 and srv2.leases() == []


def test_release_then_same_address_again():
    srv = DhcpServer(config())
    ip = dora(srv, hostname=b"db")
    dora(srv, mac=OTHER)
    assert srv.handle(msg(w.RELEASE, OTHER, ciaddr=ip, server=GW), 10.0) is None  # not its address
    assert srv.counters["drop.release_unknown"] == 1
    srv.events()
    assert srv.handle(msg(w.RELEASE, ciaddr=ip, server=GW), 10.0) is None
    assert srv.events() == [LeaseReleased(MAC_S, str(ip), "db")]
    assert srv.lease_for(MAC_S).state == "released" and srv.counters["releases"] == 1
    assert IP(discover(srv, 20.0)[1].yiaddr) == ip
    assert dora(srv, 21.0) == ip and srv.lease_for(MAC_S).hostname == "db"


def test_decline_quarantines_the_address():
    srv = DhcpServer(config(pool_end=IP("192.168.65.3"), decline_hold=600))
    ip = dora(srv)
    assert srv.handle(msg(w.DECLINE, OTHER, requested=ip, server=GW), 1.0) is None  # not its address
    assert srv.counters["drop.decline_unknown"] == 1
    srv.events()
    assert srv.handle(msg(w.DECLINE, requested=ip, server=GW), 1.0) is None
    assert srv.events() == [LeaseDeclined(MAC_S, str(ip))] and srv.counters["declines"] == 1
    other = dora(srv, 2.0)
    assert other != ip
    assert discover(srv, 3.0, mac=OTHER)[0] is None  # .2 quarantined, .3 bound
    assert reply_type(srv.handle(msg(w.REQUEST, OTHER, requested=ip), 4.0)) == w.NAK
    assert srv.next_expiry() == 601.0
    srv.expire(601.0)
    assert IP(discover(srv, 601.0, mac=OTHER)[1].yiaddr) == ip


def test_inform_gets_options_without_a_lease():
    srv = DhcpServer(config())
    r = srv.handle(msg(w.INFORM, ciaddr="192.168.65.77"), 0.0)
    m = w.parse(r.data)
    assert m.msg_type == w.ACK and m.yiaddr == w.ZERO_IP and IP(m.ciaddr) == IP("192.168.65.77")
    assert not {51, 58, 59} & set(m.options) and m.options[6] == GW.packed
    assert (r.dst_ip, r.dst_mac) == ("192.168.65.77", MAC_S)
    assert srv.leases() == [] and srv.counters["informs"] == 1
    assert srv.handle(msg(w.INFORM), 0.0) is None and srv.counters["drop.inform_bad"] == 1


def test_static_lease():
    srv = DhcpServer(config(static_leases={"52-54-00-12-34-AA": "192.168.65.10"}))
    assert dora(srv) == IP("192.168.65.10")
    other = dora(srv, mac=OTHER)
    assert other not in (IP("192.168.65.10"), GW, IP("192.168.65.254"))
    assert reply_type(srv.handle(msg(w.REQUEST, OTHER, requested="192.168.65.10"), 1.0)) == w.NAK
    assert reply_type(srv.handle(msg(w.REQUEST, requested="192.168.65.11"), 1.0)) == w.NAK
    # outside the pool is fine for a static lease
    srv = DhcpServer(config(pool_end=IP("192.168.65.100"), static_leases={MAC_S: "192.168.65.200"}))
    assert dora(srv) == IP("192.168.65.200")
    assert reply_type(srv.handle(msg(w.REQUEST, ciaddr="192.168.65.200"), 1800.0)) == w.ACK


def test_fqdn_hostname_and_sanitising():
    srv = DhcpServer(config())
    dora(srv, **{"o81": b"\x05\x00\x00\x06Laptop\x07example\x03com\x00"})
    assert srv.lease_for(MAC_S).hostname == "laptop"
    assert sanitize_hostname(b"My Host.example.com") == "my-host"
    assert sanitize_hostname(b"--x--\0junk") == "x"
    assert sanitize_hostname(b"\xff\xfe") == "" and sanitize_hostname("a" * 80) == "a" * 63


def test_lease_expiry_events_and_next_expiry():
    srv = DhcpServer(config(lease_time=60, offer_timeout=30))
    assert srv.next_expiry() is None
    discover(srv, 0.0, mac=OTHER)
    ip = dora(srv, 10.0)
    assert srv.next_expiry() == 30.0
    srv.expire(30.0)
    assert srv.next_expiry() == 70.0 and len(srv.leases()) == 1  # the offer is gone
    srv.events()
    srv.expire(69.9)
    assert srv.events() == []
    srv.expire(70.0)
    assert srv.events() == [LeaseExpired(MAC_S, str(ip), "")] and srv.next_expiry() is None
    assert dora(srv, 500.0) == ip  # remembered


def test_drops_are_counted_by_reason():
    srv = DhcpServer(config())
    relayed = bytearray(msg(w.DISCOVER))
    relayed[24:28] = bytes([10, 0, 0, 1])
    reply = bytearray(msg(w.DISCOVER))
    reply[0] = 2
    for data in (b"junk", bytes(relayed), bytes(reply), msg(w.OFFER), msg(w.DISCOVER, o50=b"abc")):
        assert srv.handle(data, 0.0) is None
    assert {k: v for k, v in srv.counters.items() if k.startswith("drop.")} == {
        "drop.malformed": 2, "drop.relayed": 1, "drop.not_request": 1, "drop.bad_type": 1}
    assert "4 bytes" in srv.last_error


def test_big_reply_fits_the_clients_limit():
    search = [f"team{i}.corp.example.com" for i in range(40)]
    srv = DhcpServer(config(search_domains=search))
    r = srv.handle(UDHCPC_DISCOVER, 0.0)  # option 57 = 576
    assert len(r.data) <= 548 and r.data[243:245] == b"\x34\x01"  # spilled into file/sname
    assert w.decode_search(w.parse(r.data).options[119]) == search
    r = srv.handle(msg(w.DISCOVER, o57=b"\x05\xdc"), 0.0)  # 1500: room enough in one field
    assert len(r.data) > 548 and r.data[240:243] == b"\x35\x01\x02" and r.data[243] != 52


# -- persistence -----------------------------------------------------------------------------
def test_same_mac_same_ip_after_snapshot_restore(tmp_path):
    cfg = config(static_leases={"52:54:00:00:00:10": "192.168.65.10"})
    srv = DhcpServer(cfg)
    ip = dora(srv, 1000.0, hostname=b"db")
    ip2 = dora(srv, 1000.0, mac=OTHER)
    srv.handle(msg(w.RELEASE, OTHER, ciaddr=ip2), 1001.0)
    dora(srv, 1000.0, mac=bytes.fromhex("525400000010"))
    discover(srv, 1002.0, mac=bytes.fromhex("525400000003"))  # an offer: not persisted
    path = tmp_path / "state" / "leases.json"
    write_json(path, srv.snapshot())
    srv2 = DhcpServer.restore(cfg, read_json(path), 2000.0)
    assert srv2.events() == []
    states = {d["mac"]: (d["ip"], d["state"], d["hostname"]) for d in srv2.leases()}
    assert states == {MAC_S: (str(ip), "bound", "db"), "52:54:00:00:00:02": (str(ip2), "released", ""),
                      "52:54:00:00:00:10": ("192.168.65.10", "bound", "")}
    assert IP(discover(srv2, 2000.0)[1].yiaddr) == ip
    assert reply_type(srv2.handle(msg(w.REQUEST, ciaddr=ip), 2001.0)) == w.ACK
    assert dora(srv2, 2002.0, mac=OTHER) == ip2
    # restored after the lease ran out: expired, but still remembered for the same client
    srv3 = DhcpServer.restore(cfg, read_json(path), 10000.0)
    assert srv3.lease_for(MAC_S).state == "expired" and srv3.events() == []
    assert dora(srv3, 10000.0) == ip


def test_restore_skips_bad_and_conflicting_records():
    cfg = config(static_leases={MAC_S: "192.168.65.10"})
    snap = {"version": 1, "leases": [
        {"mac": "52:54:00:00:00:01", "ip": "192.168.65.10", "state": "bound", "expires": 9e9},  # now static
        {"mac": MAC_S, "ip": "192.168.65.20", "state": "bound", "expires": 9e9},  # has a static address
        {"mac": "nonsense", "ip": "192.168.65.21", "state": "bound", "expires": 9e9},
        {"mac": "52:54:00:00:00:02", "ip": "10.0.0.1", "state": "bound", "expires": 9e9},
        {"mac": "52:54:00:00:00:03", "ip": "192.168.65.22", "state": "weird", "expires": 9e9},
        {"mac": "52:54:00:00:00:04", "ip": "192.168.65.23"},
        "junk",
        {"mac": "52:54:00:00:00:05", "ip": "192.168.65.24", "state": "bound", "expires": 9e9, "hostname": "ok"},
    ]}
    srv = DhcpServer.restore(cfg, snap, 0.0)
    assert [d["ip"] for d in srv.leases()] == ["192.168.65.24"] and srv.counters["restore_skipped"] == 7
    assert DhcpServer.restore(cfg, {"leases": "x"}, 0.0).leases() == []
    assert DhcpServer.restore(cfg, None, 0.0).leases() == []


# -- floods and bounds -----------------------------------------------------------------------
def random_macs(n, seed=7):
    rng = random.Random(seed)
    return [bytes([2]) + rng.randbytes(5) for _ in range(n)]


def test_discover_flood_on_a_24_does_not_starve_guests():
    srv = DhcpServer(config(offer_timeout=30))
    known = dora(srv, 0.0, hostname=b"known")
    for i, mac in enumerate(random_macs(10000)):
        srv.handle(msg(w.DISCOVER, mac), 1.0 + i * 0.001)  # 10 s of flood
        assert len(srv.table) <= 252
    assert srv.counters["offers"] == 10001 and srv.counters["offers_reclaimed"] > 9000
    # during the flood a new guest still gets an address (the oldest offer is reclaimed) ...
    newcomer = dora(srv, 11.0, mac=OTHER)
    assert newcomer != known
    # ... and the known guest keeps its own, by renewal or by a fresh DISCOVER
    assert reply_type(srv.handle(msg(w.REQUEST, ciaddr=known), 11.0)) == w.ACK
    assert dora(srv, 11.0) == known
    # after offer_timeout the flood's offers are gone: only the two bound leases remain
    srv.expire(11.0 + 30)
    assert sorted(d["state"] for d in srv.leases()) == ["bound", "bound"]
    assert dora(srv, 45.0) == known


def test_table_bounded_and_bound_leases_never_evicted():
    # a /16 pool with a small table: a flood cycles through offers, bound leases stay
    srv = DhcpServer(config(subnet=ipaddress.IPv4Network("10.0.0.0/16"), server_ip="10.0.0.1", router="10.0.0.1",
                            dns_servers=["10.0.0.1"], pool_start=None, pool_end=None, excluded=[],
                            max_leases=50))
    guests = [dora(srv, 0.0, mac=bytes([0x52, 0x54, 0, 0, 1, i])) for i in range(10)]
    for i, mac in enumerate(random_macs(3000, seed=1)):
        srv.handle(msg(w.DISCOVER, mac), 1.0 + i * 0.001)
        assert len(srv.table) <= 50
    assert srv.counters["evicted"] > 2000
    for i, ip in enumerate(guests):
        assert reply_type(srv.handle(msg(w.REQUEST, bytes([0x52, 0x54, 0, 0, 1, i]), ciaddr=ip), 10.0)) == w.ACK
    # a table full of bound leases: nothing to evict, newcomers are dropped and counted
    full = DhcpServer(config(max_leases=3))
    for i in range(3):
        dora(full, 0.0, mac=bytes([0x52, 0x54, 0, 0, 2, i]))
    assert discover(full, 0.0)[0] is None and full.counters["drop.table_full"] == 1


def test_request_flood_is_bounded_by_the_pool():
    srv = DhcpServer(config(pool_end=IP("192.168.65.20")))
    known = dora(srv, 0.0)
    for mac in random_macs(200, seed=3):
        r = srv.handle(msg(w.DISCOVER, mac), 1.0)
        if r is not None:
            srv.handle(msg(w.REQUEST, mac, requested=IP(w.parse(r.data).yiaddr), server=GW), 1.0)
    assert len(srv.table) == 19 and sum(d["state"] == "bound" for d in srv.leases()) == 19
    assert dora(srv, 2.0) == known


# -- hypothesis ------------------------------------------------------------------------------
SERVER = DhcpServer(config())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_server_handles_any_bytes(data):
    before = sum(v for k, v in SERVER.counters.items() if k.startswith("drop."))
    r = SERVER.handle(data, 0.0)
    if r is None:
        assert sum(v for k, v in SERVER.counters.items() if k.startswith("drop.")) == before + 1


interesting = st.sampled_from([1, 3, 12, 50, 51, 52, 53, 54, 55, 57, 61, 81, 119, 121, 255, 0])


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 9), st.binary(min_size=6, max_size=6), st.sampled_from([w.ZERO_IP, bytes([192, 168, 65, 5]),
       bytes([10, 1, 2, 3])]), st.integers(0, 0xFFFF),
       st.lists(st.tuples(interesting, st.binary(max_size=12)), max_size=8), st.floats(0, 1e6))
def test_server_handles_any_options(mtype, mac, ciaddr, flags, options, now):
    srv = DhcpServer(config(pool_end=IP("192.168.65.5")))
    body = b"".join(bytes((c,)) if c in (0, 255) else bytes((c, len(v))) + v for c, v in options)
    data = w.DhcpMessage(op=1, flags=flags, chaddr=mac, ciaddr=ciaddr,
                         options={}).encode(min_size=0)[:240] + bytes((53, 1, mtype)) + body + b"\xff"
    for t in (now, now + 1):
        r = srv.handle(data, t)
        if r is not None:
            assert w.parse(r.data).msg_type in (w.OFFER, w.ACK, w.NAK)


ops = st.lists(st.tuples(st.sampled_from(["discover", "select", "reboot", "renew", "release", "decline", "wait"]),
                         st.integers(0, 5), st.integers(2, 6), st.integers(0, 100)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_lease_invariants_under_random_exchanges(seq):
    """Five clients, a four-address pool, one static lease, tiny table; after every step: no
    address bound twice, every record assignable, the table bounded, renewals of live leases
    succeed."""
    cfg = config(pool_end=IP("192.168.65.5"), lease_time=60, offer_timeout=5, decline_hold=20, max_leases=4,
                 static_leases={"52:54:00:00:00:05": "192.168.65.100"})
    srv = DhcpServer(cfg)
    now = 0.0
    macs = [bytes([0x52, 0x54, 0, 0, 0, i]) for i in range(6)]
    for op, who, last_octet, dt in seq:
        mac, ip = macs[who], IP(f"192.168.65.{last_octet}")
        mine = srv.lease_for(mac.hex(":"))
        if op == "discover":
            srv.handle(msg(w.DISCOVER, mac, requested=ip), now)
        elif op == "select":
            srv.handle(msg(w.REQUEST, mac, requested=ip, server=GW), now)
        elif op == "reboot":
            srv.handle(msg(w.REQUEST, mac, requested=ip), now)
        elif op == "renew" and mine is not None:
            live = mine.state == "bound" and mine.expires > now
            r = srv.handle(msg(w.REQUEST, mac, ciaddr=mine.ip), now)
            if live:
                assert reply_type(r) == w.ACK
        elif op == "release" and mine is not None:
            srv.handle(msg(w.RELEASE, mac, ciaddr=mine.ip, server=GW), now)
        elif op == "decline":
            srv.handle(msg(w.DECLINE, mac, requested=mine.ip if mine else ip, server=GW), now)
        elif op == "wait":
            now += dt
            srv.expire(now)
        records = list(srv.table)
        assert len(records) <= 4
        assert len({le.ip for le in records}) == len(records)
        bound = [le for le in records if le.state == "bound"]
        assert len({le.mac for le in bound}) == len(bound)
        for le in records:
            assert (IP("192.168.65.2") <= le.ip <= IP("192.168.65.5")) or (
                le.ip == IP("192.168.65.100") and le.mac == "52:54:00:00:00:05")
        for mac_s, le in srv.table.by_mac.items():
            assert srv.table.by_ip[le.ip] is le and le.mac == mac_s
        nx = srv.next_expiry()
        timed = [le.expires for le in records if le.state in ("offered", "bound", "declined")]
        assert nx == (min(timed) if timed else None)
