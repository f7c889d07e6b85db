"""The virtual LAN's switch, sans-I/O: MAC learning, flooding, ARP and ping for the virtual
addresses, and delivery of each frame to the service that owns it.

``SwitchCore.handle(source, frame, now)`` returns a list of (destination, frame) pairs, where
destination is a port name (bytes). Guest ports are named b"g:...", services b"s:<name>".
The core knows which ports exist through ``attach``/``detach`` (the adapter learns it from the
XPUB subscriptions).
"""
from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict

from wire import arp, icmp, ipv4
from wire.ethernet import (BROADCAST, ETH_HEADER, ETH_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4,
                           ETHERTYPE_IPV6, FrameError, MAX_FRAME)

DHCP = b"s:dhcp"
DNS = b"s:dns"
FLOW = b"s:flow"
_PORTS = struct.Struct("!HH")


class SwitchCore:
    def __init__(self, *, gateway: str, gateway_mac: bytes, host_alias: str, dns: str,
                 subnet: str, mac_table_size: int = 4096, mac_ttl: float = 300.0):
        self.gw_ip = ipaddress.IPv4Address(gateway).packed
        self.dns_ip = ipaddress.IPv4Address(dns).packed
        self.host_ip = ipaddress.IPv4Address(host_alias).packed
        self.net = ipaddress.IPv4Network(subnet)
        self.virtual_ips = {self.gw_ip, self.dns_ip, self.host_ip}
        self.gw_mac = gateway_mac
        self.mac_table: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.mac_table_size = mac_table_size
        self.mac_ttl = mac_ttl
        self.guest_ports: set[bytes] = set()
        self.services: set[bytes] = set()
        self.counters: dict[str, int] = {}

    # -- ports -----------------------------------------------------------------------------
    def attach(self, port: bytes) -> None:
        if port.startswith(b"g:"):
            self.guest_ports.add(port)
        elif port.startswith(b"s:"):
            self.services.add(port)

    def detach(self, port: bytes) -> None:
        self.guest_ports.discard(port)
        self.services.discard(port)
        for mac in [m for m, (p, _) in self.mac_table.items() if p == port]:
            del self.mac_table[mac]

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def drop(self, reason: str) -> list:
        self._count("drop." + reason)
        return []

    def _learn(self, mac: bytes, port: bytes, now: float) -> None:
        entry = self.mac_table.get(mac)
        if entry is not None and entry[0] == port:
            if now - entry[1] > 1.0:
                self.mac_table[mac] = (port, now)
                self.mac_table.move_to_end(mac)
            return
        self.mac_table[mac] = (port, now)
        self.mac_table.move_to_end(mac)
        while len(self.mac_table) > self.mac_table_size:
            self.mac_table.popitem(last=False)
            self._count("mac_evicted")

    def port_of(self, mac: bytes, now: float) -> bytes | None:
        entry = self.mac_table.get(mac)
        if entry is None:
            return None
        if now - entry[1] > self.mac_ttl:
            del self.mac_table[mac]
            return None
        return entry[0]

    def _flood(self, source: bytes, frame) -> list:
        return [(p, frame) for p in self.guest_ports if p != source]

    # -- frames ----------------------------------------------------------------------------
    def handle(self, source: bytes, frame, now: float) -> list:
        n = len(frame)
        if n < ETH_LEN:
            return self.drop("runt")
        if n > MAX_FRAME:
            return self.drop("oversized")
        dst, src, etype = ETH_HEADER.unpack_from(frame, 0)
        from_guest = source.startswith(b"g:")
        if from_guest:
            if src[0] & 1:
                return self.drop("multicast_source")
            if src == self.gw_mac:
                return self.drop("spoofed_gateway_mac")
            self._learn(src, source, now)
        if dst == self.gw_mac:
            if not from_guest:
                return self.drop("service_to_gateway")
            return self._to_gateway(source, frame, etype, now)
        if from_guest and etype == ETHERTYPE_ARP and n >= ETH_LEN + 28 and bytes(frame[ETH_LEN + 14 : ETH_LEN + 18]) in self.virtual_ips:
            return self.drop("arp_spoofing_virtual_ip")  # no guest may claim the gateway's addresses
        if dst[0] & 1:  # broadcast / multicast
            out = self._flood(source, frame)
            if from_guest:
                if etype == ETHERTYPE_ARP:
                    out += self._arp(source, frame)
                elif etype == ETHERTYPE_IPV4 and dst == BROADCAST:
                    out += self._broadcast_ipv4(frame)
            return out
        port = self.port_of(dst, now)
        if port is not None:
            if port == source:
                return self.drop("hairpin")
            return [(port, frame)]
        self._count("unknown_unicast_flood")
        return self._flood(source, frame)

    def _broadcast_ipv4(self, frame) -> list:
        try:
            ip = ipv4.parse_ipv4(frame, ETH_LEN)
        except FrameError:
            return self.drop("bad_ipv4")
        if ip.proto == ipv4.PROTO_UDP and ip.end - ip.start >= 8:
            _, dport = _PORTS.unpack_from(frame, ip.start)
            if dport == 67:
                return [(DHCP, frame)]
        return []

    def _arp(self, source: bytes, frame) -> list:
        try:
            pkt = arp.parse_arp(frame, ETH_LEN)
        except FrameError:
            return self.drop("bad_arp")
        if pkt.op != arp.OP_REQUEST or pkt.tpa not in self.virtual_ips or pkt.tpa == pkt.spa:
            return []
        self._count("arp_replies")
        reply = arp.ArpPacket(arp.OP_REPLY, self.gw_mac, pkt.tpa, pkt.sha, pkt.spa)
        return [(source, ETH_HEADER.pack(pkt.sha, self.gw_mac, ETHERTYPE_ARP) + bytes(reply))]

    def _to_gateway(self, source: bytes, frame, etype: int, now: float) -> list:
        if etype == ETHERTYPE_ARP:
            return self._arp(source, frame)
        if etype == ETHERTYPE_IPV6:
            return [(FLOW, frame)] if FLOW in self.services else self.drop("no_flow")
        if etype != ETHERTYPE_IPV4:
            return self.drop("ethertype")
        try:
            ip = ipv4.parse_ipv4(frame, ETH_LEN)
        except FrameError:
            return self.drop("bad_ipv4")
        proto, dst_ip = ip.proto, ip.dst
        if proto == ipv4.PROTO_UDP and ip.end - ip.start >= 8 and not ip.is_fragment:
            _, dport = _PORTS.unpack_from(frame, ip.start)
            if dport == 67 and dst_ip in (self.gw_ip, b"\xff\xff\xff\xff"):
                return [(DHCP, frame)]
            if dport == 53 and dst_ip == self.dns_ip:
                return [(DNS, frame)] if DNS in self.services else self.drop("no_dns")
        if proto == ipv4.PROTO_ICMP and dst_ip == self.gw_ip:
            return self._ping_gateway(source, frame, ip)
        if FLOW in self.services:
            return [(FLOW, frame)]
        return self.drop("no_flow")

    def _ping_gateway(self, source: bytes, frame, ip) -> list:
        try:
            typ, code, ident, seq, payload = icmp.parse_icmp(frame, ip.start, ip.end)
        except FrameError:
            return self.drop("bad_icmp")
        if typ != icmp.ECHO_REQUEST:
            return self.drop("icmp_to_gateway")
        self._count("gateway_pings")
        body = icmp.build_icmp(icmp.ECHO_REPLY, 0, ident, seq, payload)
        hdr = ipv4.build_ipv4(self.gw_ip, ip.src, ipv4.PROTO_ICMP, len(body), ident=ip.ident, df=False)
        src_mac = bytes(frame[6:12])
        return [(source, ETH_HEADER.pack(src_mac, self.gw_mac, ETHERTYPE_IPV4) + bytes(hdr) + body)]
