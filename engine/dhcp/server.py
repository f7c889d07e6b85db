"""DhcpServer: a DHCPv4 server as a pure object. ``handle(bytes, now)`` returns a Reply (the
encoded message and where to send it) or None; ``events()`` drains what happened.

Theory of operation. Each client (keyed by its MAC; the client-id is recorded) has at most one Lease record;
each address at most one. A record is *offered* (held for ``offer_timeout``), *bound* (until
its lease time ends), *released*/*expired* (address free, but remembered so the same client
gets the same address again), or *declined* (address quarantined for ``decline_hold``).
Addresses are handed out in this order: a static lease; the client's previous address; the
address it asks for; a never-used address; the longest-free remembered one. Bound leases of
other clients and static addresses are never taken. The table is bounded by ``max_leases``:
when full, the stalest free/offered records are forgotten; a flood of DISCOVERs with random
MACs therefore only holds addresses for ``offer_timeout`` seconds.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from wire import dhcp as w

IPv4 = ipaddress.IPv4Address


@dataclass
class DhcpConfig:
    subnet: ipaddress.IPv4Network
    server_ip: IPv4
    router: IPv4 | None = None
    dns_servers: list = field(default_factory=list)
    domain_name: str = ""
    search_domains: list = field(default_factory=list)
    mtu: int | None = 1500
    lease_time: int = 3600
    pool_start: IPv4 | None = None
    pool_end: IPv4 | None = None
    static_leases: dict = field(default_factory=dict)  # "aa:bb:..." -> IPv4Address
    classless_routes: list = field(default_factory=list)  # [(IPv4Network, IPv4Address)]
    max_leases: int = 4096
    offer_timeout: float = 30.0
    decline_hold: float = 600.0
    excluded: list = field(default_factory=list)  # addresses never handed out (gateway, host alias…)

    def __post_init__(self):
        hosts = list(self.subnet.hosts()) if self.subnet.num_addresses <= 65536 else None
        if self.pool_start is None:
            self.pool_start = hosts[1] if hosts else self.subnet.network_address + 2
        if self.pool_end is None:
            self.pool_end = hosts[-1] if hosts else self.subnet.broadcast_address - 1
        self.static_leases = {k.lower(): IPv4(v) for k, v in self.static_leases.items()}


@dataclass
class Lease:
    mac: str
    ip: IPv4
    state: str  # offered | bound | released | expired | declined
    expires: float
    hostname: str = ""
    client_id: str = ""

    def as_dict(self) -> dict:
        return {"mac": self.mac, "ip": str(self.ip), "state": self.state, "expires": self.expires,
                "hostname": self.hostname, "client_id": self.client_id}


@dataclass
class Reply:
    data: bytes
    dst_ip: str
    dst_mac: str
    msg_type: int


# events
@dataclass(frozen=True)
class Offered:
    mac: str
    ip: str


@dataclass(frozen=True)
class LeaseGranted:
    mac: str
    ip: str
    hostname: str
    expires: float


@dataclass(frozen=True)
class LeaseReleased:
    mac: str
    ip: str
    hostname: str


@dataclass(frozen=True)
class LeaseExpired:
    mac: str
    ip: str
    hostname: str


@dataclass(frozen=True)
class LeaseDeclined:
    mac: str
    ip: str


@dataclass(frozen=True)
class Nak:
    mac: str
    reason: str


_LABEL_BAD = re.compile(r"[^a-z0-9-]+")


def sanitize_hostname(raw: bytes) -> str:
    """A valid DNS label from a client-supplied hostname (first label only)."""
    text = raw.split(b"\0")[0].decode("ascii", "ignore").strip().lower().split(".")[0]
    text = _LABEL_BAD.sub("-", text).strip("-")
    return text[:63].strip("-")


def _mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])


BROADCAST_IP = "255.255.255.255"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


class DhcpServer:
    def __init__(self, config: DhcpConfig):
        self.cfg = config
        self.by_ip: dict[IPv4, Lease] = {}
        self.by_client: dict[str, Lease] = {}
        self.counters: dict[str, int] = {}
        self._events: list = []
        self._static_ips = set(config.static_leases.values())
        self._excluded = set(config.excluded) | {config.server_ip}
        if config.router:
            self._excluded.add(config.router)
        self._next_free = int(config.pool_start)

    # -- persistence ---------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"version": 1, "leases": [le.as_dict() for le in self.by_ip.values() if le.state != "offered"]}

    @classmethod
    def restore(cls, config: DhcpConfig, snapshot: dict | None, now: float) -> "DhcpServer":
        srv = cls(config)
        for d in (snapshot or {}).get("leases", []):
            try:
                ip = IPv4(d["ip"])
                lease = Lease(str(d["mac"]).lower(), ip, str(d["state"]), float(d["expires"]),
                              str(d.get("hostname", "")), str(d.get("client_id", "")))
            except (KeyError, ValueError, TypeError):
                srv._count("restore_skipped")
                continue
            if ip not in config.subnet or ip in srv._excluded:
                srv._count("restore_skipped")
                continue
            srv._insert(lease)
        srv.expire(now)
        srv._events.clear()
        return srv

    # -- bookkeeping ---------------------------------------------------------------------
    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def events(self) -> list:
        ev, self._events = self._events, []
        return ev

    def leases(self) -> list[dict]:
        return [le.as_dict() for le in sorted(self.by_ip.values(), key=lambda x: int(x.ip))]

    def _key(self, mac: str, client_id: str) -> str:
        # Clients are keyed by MAC: a VM's MAC is stable, while some clients send a client-id
        # in DISCOVER and not in REQUEST (or change its form across reboots).
        return mac

    def _insert(self, lease: Lease) -> None:
        old = self.by_ip.get(lease.ip)
        if old is not None:
            self.by_client.pop(self._key(old.mac, old.client_id), None)
        prev = self.by_client.get(self._key(lease.mac, lease.client_id))
        if prev is not None and prev.ip != lease.ip:
            self.by_ip.pop(prev.ip, None)
        self.by_ip[lease.ip] = lease
        self.by_client[self._key(lease.mac, lease.client_id)] = lease

    def _forget(self, lease: Lease) -> None:
        self.by_ip.pop(lease.ip, None)
        k = self._key(lease.mac, lease.client_id)
        if self.by_client.get(k) is lease:
            del self.by_client[k]

    def _in_pool(self, ip: IPv4) -> bool:
        return self.cfg.pool_start <= ip <= self.cfg.pool_end and ip not in self._excluded

    def _is_free_for(self, ip: IPv4, lease_key: str, mac: str, now: float) -> bool:
        if ip not in self.cfg.subnet or ip in self._excluded:
            return False
        if ip in self._static_ips and self.cfg.static_leases.get(mac) != ip:
            return False
        le = self.by_ip.get(ip)
        if le is None:
            return True
        if self._key(le.mac, le.client_id) == lease_key:
            return le.state != "declined" or le.expires <= now
        return le.state in ("released", "expired") or le.expires <= now

    def expire(self, now: float) -> None:
        for le in list(self.by_ip.values()):
            if le.expires > now:
                continue
            if le.state == "bound":
                le.state = "expired"
                self._count("expired")
                self._events.append(LeaseExpired(le.mac, str(le.ip), le.hostname))
            elif le.state in ("offered", "declined"):
                self._forget(le)

    def next_expiry(self) -> float | None:
        pending = [le.expires for le in self.by_ip.values() if le.state in ("bound", "offered", "declined")]
        return min(pending) if pending else None

    def _make_room(self, now: float) -> bool:
        if len(self.by_ip) < self.cfg.max_leases:
            return True
        self.expire(now)
        if len(self.by_ip) < self.cfg.max_leases:
            return True
        free = [le for le in self.by_ip.values() if le.state in ("released", "expired", "offered")]
        free.sort(key=lambda le: (le.state != "offered" and le.expires > now, le.expires))
        for le in free[: max(1, len(free) // 16)]:
            self._forget(le)
            self._count("evicted")
        return len(self.by_ip) < self.cfg.max_leases

    def _allocate(self, key: str, mac: str, requested: IPv4 | None, now: float) -> IPv4 | None:
        static = self.cfg.static_leases.get(mac)
        if static is not None:
            return static
        prev = self.by_client.get(key)
        if prev is not None and prev.state != "declined" and self._in_pool(prev.ip):
            return prev.ip
        if requested is not None and self._in_pool(requested) and self._is_free_for(requested, key, mac, now):
            return requested
        start, end = int(self.cfg.pool_start), int(self.cfg.pool_end)
        size = end - start + 1
        for i in range(size):  # never-used addresses first, round robin
            cand = IPv4(start + (self._next_free - start + i) % size)
            if cand not in self.by_ip and cand not in self._excluded and cand not in self._static_ips:
                self._next_free = int(cand) + 1
                return cand
        reusable = [le for le in self.by_ip.values() if le.ip not in self._static_ips and self._in_pool(le.ip)
                    and (le.state in ("released", "expired") or (le.state != "declined" and le.expires <= now)
                         or (le.state == "declined" and le.expires <= now))]
        if not reusable:
            return None
        return min(reusable, key=lambda le: le.expires).ip

    # -- messages ------------------------------------------------------------------------
    def handle(self, data: bytes, now: float) -> Reply | None:
        try:
            msg = w.parse(data)
            if msg.op != w.BOOTREQUEST:
                raise w.DhcpError("not a BOOTREQUEST")
            mtype = msg.msg_type
            if mtype is None:
                raise w.DhcpError("no message type option")
            if msg.giaddr != b"\0\0\0\0":
                raise w.DhcpError("relayed messages are not served")
            handler = {w.DISCOVER: self._discover, w.REQUEST: self._request, w.DECLINE: self._decline,
                       w.RELEASE: self._release, w.INFORM: self._inform}.get(mtype)
            if handler is None:
                raise w.DhcpError(f"message type {mtype} is not for a server")
            return handler(msg, now)
        except w.DhcpError as e:
            self._count("drop.malformed")
            self.last_error = str(e)
            return None

    def _client(self, msg: w.DhcpMessage) -> tuple[str, str, str]:
        mac = _mac_str(msg.chaddr)
        cid = msg.options.get(w.OPT_CLIENT_ID, b"").hex()
        return mac, cid, self._key(mac, cid)

    def _hostname(self, msg: w.DhcpMessage) -> str:
        if w.OPT_HOSTNAME in msg.options:
            return sanitize_hostname(msg.options[w.OPT_HOSTNAME])
        fqdn = msg.options.get(w.OPT_FQDN)
        if fqdn and len(fqdn) > 3:
            name = fqdn[3:]
            if fqdn[0] & 0x04:  # E bit: canonical wire format
                name = name[1 : 1 + name[0]] if name else b""
            return sanitize_hostname(name)
        return ""

    def _discover(self, msg, now) -> Reply | None:
        self.expire(now)
        mac, cid, key = self._client(msg)
        req = msg.ip_option(w.OPT_REQUESTED_IP)
        ip = self._allocate(key, mac, IPv4(req) if req else None, now)
        if ip is None:
            self._count("pool_exhausted")
            return None
        cur = self.by_ip.get(ip)
        if cur is None or self._key(cur.mac, cur.client_id) != key:
            if not self._make_room(now):
                self._count("table_full")
                return None
        existing = self.by_client.get(key)
        if existing is not None and existing.ip == ip and existing.state == "bound" and existing.expires > now:
            pass  # keep the binding; the offer repeats it
        else:
            self._insert(Lease(mac, ip, "offered", now + self.cfg.offer_timeout, self._hostname(msg), cid))
        self._count("offers")
        self._events.append(Offered(mac, str(ip)))
        return self._reply(msg, w.OFFER, ip, lease=True)

    def _request(self, msg, now) -> Reply | None:
        self.expire(now)
        mac, cid, key = self._client(msg)
        server_id = msg.ip_option(w.OPT_SERVER_ID)
        req = msg.ip_option(w.OPT_REQUESTED_IP)
        if server_id is not None and IPv4(server_id) != self.cfg.server_ip:
            le = self.by_client.get(key)
            if le is not None and le.state == "offered":
                self._forget(le)
            self._count("other_server")
            return None
        if req is not None:
            ip = IPv4(req)
        elif msg.ciaddr != b"\0\0\0\0":
            ip = IPv4(msg.ciaddr)
        else:
            return self._nak(msg, mac, "REQUEST without an address")
        if ip not in self.cfg.subnet:
            return self._nak(msg, mac, f"{ip} is not on this network")
        static = self.cfg.static_leases.get(mac)
        if static is not None and static != ip:
            return self._nak(msg, mac, f"{mac} has the static address {static}")
        le = self.by_client.get(key)
        ours = le is not None and le.ip == ip and (le.state != "declined")
        if not ours:
            if not (self._in_pool(ip) or ip == static) or not self._is_free_for(ip, key, mac, now):
                return self._nak(msg, mac, f"{ip} is not available to {mac}")
            if not self._make_room(now):
                self._count("table_full")
                return None
        hostname = self._hostname(msg) or (le.hostname if le else "")
        lease = Lease(mac, ip, "bound", now + self.cfg.lease_time, hostname, cid)
        self._insert(lease)
        self._count("acks")
        self._events.append(LeaseGranted(mac, str(ip), hostname, lease.expires))
        return self._reply(msg, w.ACK, ip, lease=True)

    def _nak(self, msg, mac: str, reason: str) -> Reply:
        self._count("naks")
        self._events.append(Nak(mac, reason))
        out = w.DhcpMessage(op=w.BOOTREPLY, xid=msg.xid, flags=msg.flags, giaddr=msg.giaddr, chaddr=msg.chaddr,
                            options={w.OPT_MSG_TYPE: bytes((w.NAK,)), w.OPT_SERVER_ID: self.cfg.server_ip.packed,
                                     w.OPT_MESSAGE: reason.encode()[:250]})
        return Reply(out.encode(), BROADCAST_IP, BROADCAST_MAC, w.NAK)

    def _decline(self, msg, now) -> None:
        mac, cid, key = self._client(msg)
        req = msg.ip_option(w.OPT_REQUESTED_IP)
        if req is None:
            raise w.DhcpError("DECLINE without a requested address")
        ip = IPv4(req)
        le = self.by_ip.get(ip)
        if le is not None and self._key(le.mac, le.client_id) != key:
            raise w.DhcpError("DECLINE for an address of another client")
        if ip in self.cfg.subnet:
            self._insert(Lease(mac, ip, "declined", now + self.cfg.decline_hold, "", cid))
            # the client is forgotten so its next DISCOVER gets another address
            self.by_client.pop(key, None)
        self._count("declines")
        self._events.append(LeaseDeclined(mac, str(ip)))
        return None

    def _release(self, msg, now) -> None:
        mac, cid, key = self._client(msg)
        le = self.by_client.get(key)
        if le is not None and le.ip.packed == msg.ciaddr and le.state == "bound":
            le.state = "released"
            le.expires = now
            self._count("releases")
            self._events.append(LeaseReleased(mac, str(le.ip), le.hostname))
        else:
            self._count("drop.release_unknown")
        return None

    def _inform(self, msg, now) -> Reply | None:
        if msg.ciaddr == b"\0\0\0\0":
            raise w.DhcpError("INFORM without ciaddr")
        self._count("informs")
        return self._reply(msg, w.ACK, None, lease=False)

    def _options(self, msg, mtype: int, lease: bool) -> dict:
        c = self.cfg
        opts: dict[int, bytes] = {w.OPT_MSG_TYPE: bytes((mtype,)), w.OPT_SERVER_ID: c.server_ip.packed,
                                  w.OPT_SUBNET_MASK: c.subnet.netmask.packed,
                                  w.OPT_BROADCAST: c.subnet.broadcast_address.packed}
        if c.router:
            opts[w.OPT_ROUTER] = c.router.packed
        if c.dns_servers:
            opts[w.OPT_DNS] = w.ip_list(c.dns_servers)
        if c.domain_name:
            opts[w.OPT_DOMAIN] = c.domain_name.encode()
        if c.search_domains:
            opts[w.OPT_SEARCH] = w.encode_search(c.search_domains)
        if c.mtu:
            opts[w.OPT_MTU] = w.u16(c.mtu)
        if lease:
            opts[w.OPT_LEASE_TIME] = w.u32(c.lease_time)
            opts[w.OPT_T1] = w.u32(c.lease_time // 2)
            opts[w.OPT_T2] = w.u32(c.lease_time * 7 // 8)
        if c.classless_routes:
            routes = list(c.classless_routes)
            if c.router and not any(n.prefixlen == 0 for n, _ in routes):
                routes.append((ipaddress.IPv4Network("0.0.0.0/0"), c.router))
            opts[w.OPT_CLASSLESS] = w.encode_classless(routes)
        prl = msg.options.get(w.OPT_PARAM_LIST, b"")
        if prl:  # the client's order first, then the rest
            ordered = {code: opts[code] for code in (w.OPT_MSG_TYPE, w.OPT_SERVER_ID) if code in opts}
            ordered.update({code: opts[code] for code in prl if code in opts})
            ordered.update(opts)
            opts = ordered
        return opts

    def _reply(self, msg, mtype: int, ip: IPv4 | None, lease: bool) -> Reply:
        out = w.DhcpMessage(op=w.BOOTREPLY, xid=msg.xid, flags=msg.flags, ciaddr=msg.ciaddr if mtype == w.ACK else b"\0" * 4,
                            yiaddr=ip.packed if ip is not None else b"\0" * 4, siaddr=self.cfg.server_ip.packed,
                            giaddr=msg.giaddr, chaddr=msg.chaddr, options=self._options(msg, mtype, lease))
        mac = _mac_str(msg.chaddr)
        if msg.ciaddr != b"\0\0\0\0":
            dst_ip, dst_mac = str(IPv4(msg.ciaddr)), mac
        elif msg.flags & w.FLAG_BROADCAST or ip is None:
            dst_ip, dst_mac = BROADCAST_IP, BROADCAST_MAC
        else:
            dst_ip, dst_mac = str(ip), mac
        return Reply(out.encode(), dst_ip, dst_mac, mtype)
