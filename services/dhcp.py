"""The dhcp service: DHCPv4 on the virtual LAN. Frames in from the switch (UDP to port 67),
replies out as ethernet frames; leases persisted atomically in RUN/state/leases.json and
announced as ``lease`` events (the dns service names guests from them)."""
from __future__ import annotations

import ipaddress
import time

from engine.dhcp.server import DhcpConfig, DhcpServer
from gangway.statefile import read_json, write_json
from services.common import Service
from wire import ipv4, udp
from wire.ethernet import ETHERTYPE_IPV4, FrameError, build_eth, mac_bytes

LEASES_FILE = "leases.json"


def host_search_domains(path: str = "/etc/resolv.conf") -> list[str]:
    """The host's DNS search list (handed to guests after the configured domains)."""
    out: list[str] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("search", "domain"):
                    out.extend(p.rstrip(".") for p in parts[1:])
    except OSError:
        pass
    return out


def dhcp_config(cfg: dict) -> DhcpConfig:
    net, d = cfg["network"], cfg["dhcp"]
    search = [d["domain"], *d["search"]]
    for s in host_search_domains(cfg["dns"].get("resolv_conf", "/etc/resolv.conf")):
        if s not in search:
            search.append(s)
    return DhcpConfig(
        subnet=ipaddress.IPv4Network(net["subnet"]),
        server_ip=ipaddress.IPv4Address(net["gateway"]),
        router=ipaddress.IPv4Address(net["gateway"]),
        dns_servers=[ipaddress.IPv4Address(net["dns"])],
        domain_name=d["domain"],
        search_domains=search,
        mtu=net["mtu"],
        lease_time=d["lease_time"],
        pool_start=ipaddress.IPv4Address(d["pool_start"]),
        pool_end=ipaddress.IPv4Address(d["pool_end"]),
        static_leases={s["mac"].lower(): ipaddress.IPv4Address(s["ip"]) for s in d["static"]},
        classless_routes=[(ipaddress.IPv4Network(r["network"]), ipaddress.IPv4Address(r["gateway"])) for r in d["routes"]],
        max_leases=d["max_leases"],
        excluded=[ipaddress.IPv4Address(net["host_alias"]), ipaddress.IPv4Address(net["gateway"]),
                  ipaddress.IPv4Address(net["dns"])],
    )


class DhcpService(Service):
    name = "dhcp"
    subscribe = (b"s:dhcp",)

    def __init__(self, run_dir, cfg=None):
        super().__init__(run_dir, cfg)
        self.gw_mac = mac_bytes(self.cfg["network"]["gateway_mac"])
        self.gw_ip = ipaddress.IPv4Address(self.cfg["network"]["gateway"]).packed
        self.state_path = self.run_dir / "state" / LEASES_FILE
        conf = dhcp_config(self.cfg)
        snap = None
        try:
            snap = read_json(self.state_path)
        except ValueError as e:
            self.log.error("leases_file_corrupt", path=str(self.state_path), error=str(e))
        now = time.time()
        self.server = DhcpServer.restore(conf, snap, now) if snap else DhcpServer(conf)
        self.dirty = False

    def start(self) -> None:
        self.loop.call_every(5.0, self._housekeeping)
        leases = [le for le in self.server.leases() if le.get("state") == "bound"]
        self.log.info("leases_loaded", count=len(leases))
        for lease in leases:
            self._announce_lease(lease)

    def _announce_lease(self, lease) -> None:
        d = lease if isinstance(lease, dict) else vars(lease)
        self.publish_event("lease", mac=str(d.get("mac")), ip=str(d.get("ip")), hostname=d.get("hostname") or "",
                           expires=d.get("expires"), state="bound")

    def on_frames(self, frames: list) -> None:
        now = time.time()
        out = []
        for frame in frames:
            self.count("frames_in")
            try:
                _mac, _ip, _sport, dport, payload = udp.parse_udp_frame(frame)
                if dport != 67:
                    raise FrameError("not to port 67")
            except FrameError as e:
                self.drops.drop("bad_frame", error=str(e))
                continue
            reply = self.server.handle(bytes(payload), now)
            for ev in self.server.events():
                self._on_event(ev)
            if reply is None:
                continue
            dst_ip = ipaddress.IPv4Address(reply.dst_ip).packed
            dst_mac = mac_bytes(reply.dst_mac) if isinstance(reply.dst_mac, str) else reply.dst_mac
            body = udp.build_udp(self.gw_ip, dst_ip, 67, 68, reply.data)
            hdr = ipv4.build_ipv4(self.gw_ip, dst_ip, ipv4.PROTO_UDP, len(body), ttl=64, df=False)
            out.append(build_eth(dst_mac, self.gw_mac, ETHERTYPE_IPV4, bytes(hdr) + body))
            self.count("replies")
        self.send_frames(out)
        if self.dirty:
            self._save()

    def _on_event(self, ev) -> None:
        kind = type(ev).__name__
        fields = {k: (v if isinstance(v, (int, float, str, type(None))) else str(v)) for k, v in vars(ev).items()}
        # offers are per DISCOVER (a flood would flood the log): debug; the rest are per lease
        (self.log.debug if kind == "Offered" else self.log.info)("dhcp_" + kind.lower(), **fields)
        if kind == "LeaseGranted":
            self.dirty = True
            self.publish_event("lease", mac=fields.get("mac"), ip=fields.get("ip"),
                               hostname=fields.get("hostname") or "", expires=fields.get("expires"), state="bound")
        elif kind in ("LeaseReleased", "LeaseExpired", "LeaseDeclined"):
            self.dirty = True
            self.publish_event("lease", mac=fields.get("mac") or "", ip=fields.get("ip"), hostname=fields.get("hostname") or "",
                               expires=0, state="released")

    def _save(self) -> None:
        try:
            write_json(self.state_path, self.server.snapshot())
            self.dirty = False
        except OSError as e:
            self.log.error("leases_save_failed", error=str(e))

    def _housekeeping(self) -> None:
        self.server.expire(time.time())
        for ev in self.server.events():
            self._on_event(ev)
        if self.dirty:
            self._save()

    def handle_stats(self, msg) -> dict:
        r = super().handle_stats(msg)
        r["counters"].update({f"dhcp.{k}": v for k, v in self.server.counters.items()})
        r["counters"]["leases"] = sum(1 for le in self.server.leases() if le.get("state") == "bound")
        return r

    def handle_leases(self, msg) -> dict:
        out = []
        for lease in self.server.leases():
            d = lease if isinstance(lease, dict) else vars(lease)
            out.append({k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in d.items()})
        return {"leases": out}

    def stop(self) -> None:
        if self.dirty:
            self._save()


if __name__ == "__main__":
    DhcpService.main()
