"""The dns service: the bus adapter around DnsServer (services/dnsserver.py).

UDP queries to the DNS address arrive as frames from the switch (topic s:dns) and are answered
with frames; DNS over TCP reaches the same server through flow's mapping of gateway:53/tcp to
the unix socket RUN/dns-tcp.sock. Guest names come from the dhcp service's ``lease`` events
and, at start, from its lease table."""
from __future__ import annotations

import ipaddress


from bus import endpoints, envelope
from bus.client import ControlError, request
from services.common import Service
from services.dnsserver import DnsServer
from wire import ipv4, udp
from wire.ethernet import ETHERTYPE_IPV4, FrameError, build_eth, mac_bytes

TCP_SOCKET = "dns-tcp.sock"


class DnsService(Service):
    name = "dns"
    subscribe = (b"s:dns", b"ev:lease")

    def __init__(self, run_dir, cfg=None):
        super().__init__(run_dir, cfg)
        net = self.cfg["network"]
        self.gw_mac = mac_bytes(net["gateway_mac"])
        self.dns_ip = ipaddress.IPv4Address(net["dns"]).packed
        self.server = DnsServer(self.loop, self.cfg["dns"], gateway=net["gateway"], host_alias=net["host_alias"],
                                subnet=net["subnet"], state_dir=self.run_dir / "state", log=self.log)
        self.guests: dict[str, str] = {}  # mac -> hostname

    def start(self) -> None:
        path = self.run_dir / TCP_SOCKET
        path.unlink(missing_ok=True)
        self.server.listen_tcp(str(path))
        self.loop.call_later(0.5, self._sync_leases)

    def _sync_leases(self) -> None:
        try:
            leases = request(self.run_dir, "dhcp", "leases", timeout=1.0)["leases"]
        except ControlError as e:
            self.log.info("lease_sync_deferred", error=str(e))
            self.loop.call_later(5.0, self._sync_leases)
            return
        for le in leases:
            self._guest(str(le.get("mac", "")), str(le.get("ip", "")), le.get("hostname") or "", True)

    def _guest(self, mac: str, ip: str, hostname: str, bound: bool) -> None:
        old = self.guests.get(mac)
        if old and (not bound or old != hostname):
            self.server.remove_guest(old)
            del self.guests[mac]
        if bound and hostname and ip:
            self.server.set_guest(hostname, ip)
            self.guests[mac] = hostname

    def on_message(self, parts: list) -> None:
        topic = parts[0]
        if topic.startswith(endpoints.EVENT_PREFIX):
            try:
                ev = envelope.unpack(parts[1])
            except envelope.EnvelopeError as e:
                self.drops.drop("bad_event", error=str(e))
                return
            self._guest(str(ev.get("mac", "")), str(ev.get("ip", "")), ev.get("hostname") or "", ev.get("state") == "bound")
            return
        self.on_frames(parts[1:])

    def on_frames(self, frames: list) -> None:
        for frame in frames:
            self.count("frames_in")
            try:
                src_mac, ip, sport, _dport, payload = udp.parse_udp_frame(frame)
            except FrameError as e:
                self.drops.drop("bad_frame", error=str(e))
                continue
            self.server.query(bytes(payload), self._replier(bytes(src_mac), ip.src, sport), transport="udp")

    def _replier(self, mac: bytes, client_ip: bytes, sport: int):
        def reply(data: bytes) -> None:
            body = udp.build_udp(self.dns_ip, client_ip, 53, sport, data)
            hdr = ipv4.build_ipv4(self.dns_ip, client_ip, ipv4.PROTO_UDP, len(body), df=False)
            self.send_frames([build_eth(mac, self.gw_mac, ETHERTYPE_IPV4, bytes(hdr) + body)])
            self.count("replies")
        return reply

    # -- control: gangway dns add|rm|list ---------------------------------------------------
    def handle_dns_add(self, msg) -> dict:
        self.server.add_record(msg["name"], msg["rtype"], msg["value"], **({"ttl": msg["ttl"]} if msg.get("ttl") else {}))
        return {"records": self.server.list_records()}

    def handle_dns_rm(self, msg) -> dict:
        removed = self.server.remove_record(msg["name"], msg.get("rtype"), msg.get("value"))
        return {"removed": removed if isinstance(removed, int) else bool(removed)}

    def handle_dns_list(self, msg) -> dict:
        return {"records": self.server.list_records()}

    def handle_stats(self, msg) -> dict:
        r = super().handle_stats(msg)
        r["counters"].update({f"dns.{k}": v for k, v in self.server.counters.items()})
        return r

    def stop(self) -> None:
        self.server.close()


if __name__ == "__main__":
    DnsService.main()
