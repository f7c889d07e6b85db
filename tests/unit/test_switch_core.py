"""SwitchCore: learning, flooding, ARP and ping for virtual addresses, service delivery."""
from hypothesis import given, settings, strategies as st

from engine.switch import DHCP, DNS, FLOW, SwitchCore
from wire import arp, icmp, ipv4, udp
from wire.ethernet import BROADCAST, build_eth, mac_bytes

GW_MAC = mac_bytes("5a:94:ef:e4:0c:dd")
A, B = mac_bytes("02:00:00:00:00:0a"), mac_bytes("02:00:00:00:00:0b")
IP_A, GW = bytes([192, 168, 65, 10]), bytes([192, 168, 65, 1])


def core(**kw):
    c = SwitchCore(gateway="192.168.65.1", gateway_mac=GW_MAC, host_alias="192.168.65.254",
                   dns="192.168.65.1", subnet="192.168.65.0/24", **kw)
    for p in (b"g:a", b"g:b", DHCP, DNS, FLOW):
        c.attach(p)
    return c


def udp_frame(src_mac, dst_mac, src_ip, dst_ip, sport, dport, payload=b"x"):
    body = udp.build_udp(src_ip, dst_ip, sport, dport, payload)
    return build_eth(dst_mac, src_mac, 0x0800, bytes(ipv4.build_ipv4(src_ip, dst_ip, 17, len(body))) + body)


def test_arp_for_gateway_answered_and_flooded():
    c = core()
    req = arp.ArpPacket(arp.OP_REQUEST, A, IP_A, b"\0" * 6, GW)
    out = c.handle(b"g:a", build_eth(BROADCAST, A, 0x0806, bytes(req)), 0.0)
    dests = sorted(d for d, _ in out)
    assert dests == [b"g:a", b"g:b"]
    reply = [f for d, f in out if d == b"g:a"][0]
    pkt = arp.parse_arp(reply, 14)
    assert pkt.op == arp.OP_REPLY and pkt.sha == GW_MAC and pkt.spa == GW and pkt.tha == A


def test_arp_for_other_guest_only_flooded():
    c = core()
    req = arp.ArpPacket(arp.OP_REQUEST, A, IP_A, b"\0" * 6, bytes([192, 168, 65, 11]))
    out = c.handle(b"g:a", build_eth(BROADCAST, A, 0x0806, bytes(req)), 0.0)
    assert [d for d, _ in out] == [b"g:b"]


def test_learning_and_unicast_between_guests():
    c = core()
    c.handle(b"g:b", build_eth(BROADCAST, B, 0x0806, bytes(arp.ArpPacket(1, B, b"\1" * 4, b"\0" * 6, b"\2" * 4))), 0.0)
    out = c.handle(b"g:a", build_eth(B, A, 0x0800, b"\0" * 40), 1.0)
    assert [d for d, _ in out] == [b"g:b"]
    # aged out: flooded again
    out = c.handle(b"g:a", build_eth(B, A, 0x0800, b"\0" * 40), 1000.0)
    assert c.counters.get("unknown_unicast_flood") == 1


def test_dhcp_dns_flow_delivery():
    c = core()
    disc = udp_frame(A, BROADCAST, b"\0" * 4, b"\xff" * 4, 68, 67)
    assert (DHCP, disc) in c.handle(b"g:a", disc, 0.0)
    q = udp_frame(A, GW_MAC, IP_A, GW, 5353, 53)
    assert c.handle(b"g:a", q, 0.0) == [(DNS, q)]
    other = udp_frame(A, GW_MAC, IP_A, bytes([127, 0, 0, 1]), 5353, 9999)
    assert c.handle(b"g:a", other, 0.0) == [(FLOW, other)]


def test_gateway_ping():
    c = core()
    body = icmp.build_icmp(icmp.ECHO_REQUEST, 0, 7, 3, b"ping!")
    frame = build_eth(GW_MAC, A, 0x0800, bytes(ipv4.build_ipv4(IP_A, GW, 1, len(body))) + body)
    [(dest, reply)] = c.handle(b"g:a", frame, 0.0)
    ip = ipv4.parse_ipv4(reply, 14)
    typ, _, ident, seq, data = icmp.parse_icmp(reply, ip.start, ip.end)
    assert dest == b"g:a" and (typ, ident, seq, bytes(data)) == (0, 7, 3, b"ping!") and ip.dst == IP_A


def test_mac_table_bounded_under_random_source_flood():
    c = core(mac_table_size=100)
    for i in range(5000):
        src = bytes([2, 0, 0, (i >> 16) & 255, (i >> 8) & 255, i & 255])
        c.handle(b"g:a", build_eth(BROADCAST, src, 0x88B5, b"\0" * 46), float(i))
    assert len(c.mac_table) == 100


@settings(max_examples=500)
@given(st.binary(max_size=120), st.sampled_from([b"g:a", b"s:flow", b"s:dhcp"]))
def test_any_bytes_never_raise(data, src):
    c = core()
    c.handle(src, memoryview(data), 0.0)  # the switch service hands the core memoryviews
    c.handle(src, data, 0.0)
    c.handle(src, GW_MAC + A + b"\x08\x00" + data, 0.0)
    c.handle(src, BROADCAST + A + b"\x08\x06" + data, 0.0)
    c.handle(src, memoryview(BROADCAST + A + b"\x08\x06" + data), 0.0)
    c.handle(src, memoryview(GW_MAC + A + b"\x08\x00" + data), 0.0)


def test_guest_cannot_claim_virtual_addresses_by_arp():
    c = core()
    for op in (arp.OP_REQUEST, arp.OP_REPLY):
        spoof = arp.ArpPacket(op, A, GW, b"\0" * 6, IP_A)
        assert c.handle(b"g:a", build_eth(BROADCAST, A, 0x0806, bytes(spoof)), 0.0) == []
    assert c.counters["drop.arp_spoofing_virtual_ip"] == 2
