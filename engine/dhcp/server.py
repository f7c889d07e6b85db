"""DhcpServer: a DHCPv4 server (RFC 2131) as a pure object. ``handle(bytes, now)`` returns a
Reply (the encoded message and where to send it) or None; ``events()`` drains what happened;
``expire(now)`` / ``next_expiry()`` drive its one timer. No sockets, no clock of its own.

Theory of operation
-------------------
Clients are keyed by MAC (a VM's MAC is stable; client-ids are recorded but some clients send
one in DISCOVER and not in REQUEST, and cloned images share DUID-based ones). The lease table
(leases.py) holds at most one record per address and per client: *offered* (held for
``offer_timeout``), *bound* (until the lease ends), *released*/*expired* (free, but remembered
so the same client gets the same address again), or *declined* (quarantined for
``decline_hold`` and detached from its client).

DISCOVER picks, in order: the client's static address; its current or remembered address; the
address it asks for (option 50) if free; a never-used pool address (round robin); the address
free the longest; the oldest offer made to another client. No address: no reply.

REQUEST is told apart by its fields (RFC 2131 4.3.2):
    server id set            SELECTING    another server's id: the client chose it, our offer
                                          is withdrawn, no reply
    requested IP, no ciaddr  INIT-REBOOT
    ciaddr, no requested IP  RENEWING (unicast) / REBINDING (broadcast)
We are authoritative for the subnet: the address is ACKed when it is the client's, or free and
assignable to it; NAKed when it is off the subnet, another client's, not in the pool, not the
client's static address, or (outside SELECTING) not the address bound to it.

Bounds: the table never exceeds ``max_leases``. When full, a new record evicts the oldest free
record, then the oldest offer, then the oldest quarantine. Bound leases and static addresses
are never taken, so a flood of DISCOVERs from random MACs holds addresses only as offers:
each lives ``offer_timeout`` at most and is reclaimed first when the pool runs dry.

Persistence: ``snapshot()`` is JSON-serialisable (offers are left out); ``restore(config,
snapshot, now)`` rebuilds the table, skipping records the config no longer allows. Deadlines
are absolute, so ``now`` must be wall-clock time when snapshots outlive the process.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from wire import dhcp as w

from .leases import BOUND, DECLINED, EXPIRED, FREE, OFFERED, RELEASED, STATES, Lease, LeaseTable
from .options import ReplyOptions, sanitize_hostname

__all__ = ["DhcpConfig", "DhcpServer", "Reply", "Lease", "Offered", "LeaseGranted", "LeaseReleased",
           "LeaseExpired", "LeaseDeclined", "Nak", "sanitize_hostname", "BROADCAST_IP", "BROADCAST_MAC"]

IPv4 = ipaddress.IPv4Address
BROADCAST_IP = "255.255.255.255"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
SNAPSHOT_VERSION = 1


def normalize_mac(mac: str) -> str:
    """"52-54-00-AB-CD-EF" or "5254.00ab.cdef" -> "52:54:00:ab:cd:ef"; ValueError if not a MAC."""
    digits = "".join(c for c in str(mac).lower() if c not in ":-.")
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not a MAC address: {mac!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


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
    pool_start: IPv4 | None = None  # default: the second host address (.2 in a /24)
    pool_end: IPv4 | None = None  # default: the last host address
    static_leases: dict = field(default_factory=dict)  # "aa:bb:cc:dd:ee:ff" -> IPv4Address
    classless_routes: list = field(default_factory=list)  # [(IPv4Network, IPv4Address)]
    max_leases: int = 4096
    offer_timeout: float = 30.0
    decline_hold: float = 600.0
    excluded: list = field(default_factory=list)  # never handed out (host alias, DNS address…)

    def __post_init__(self):
        """Coerce strings to addresses and check the config; ValueError says what is wrong."""
        self.subnet = ipaddress.IPv4Network(self.subnet)
        if self.subnet.prefixlen > 30:
            raise ValueError(f"subnet {self.subnet} is too small for DHCP (at most /30)")
        self.server_ip = IPv4(self.server_ip)
        self.router = IPv4(self.router) if self.router is not None else None
        self.dns_servers = [IPv4(a) for a in self.dns_servers]
        self.search_domains = [str(d) for d in self.search_domains]
        first, last = self.subnet.network_address + 1, self.subnet.broadcast_address - 1
        self.pool_start = IPv4(self.pool_start) if self.pool_start is not None else min(first + 1, last)
        self.pool_end = IPv4(self.pool_end) if self.pool_end is not None else last
        self.static_leases = {normalize_mac(k): IPv4(v) for k, v in self.static_leases.items()}
        self.classless_routes = [(ipaddress.IPv4Network(n), IPv4(g)) for n, g in self.classless_routes]
        self.excluded = [IPv4(a) for a in self.excluded]
        for name in ("server_ip", "pool_start", "pool_end"):
            if getattr(self, name) not in self.subnet:
                raise ValueError(f"{name} {getattr(self, name)} is not in {self.subnet}")
        if self.pool_start > self.pool_end:
            raise ValueError(f"pool_start {self.pool_start} is after pool_end {self.pool_end}")
        for mac, ip in self.static_leases.items():
            if ip not in self.subnet or ip in (self.subnet.network_address, self.subnet.broadcast_address):
                raise ValueError(f"static lease {ip} for {mac} is not a host address of {self.subnet}")
        if len(set(self.static_leases.values())) != len(self.static_leases):
            raise ValueError("two static leases share an address")
        if not 60 <= self.lease_time <= 0xFFFFFFFE:
            raise ValueError(f"lease_time must be at least 60 seconds, got {self.lease_time}")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ValueError(f"mtu {self.mtu} is out of range")
        if self.max_leases < 1:
            raise ValueError("max_leases must be positive")


@dataclass
class Reply:
    """An encoded reply and where the adapter sends it (UDP 67 -> 68, from server_ip)."""
    data: bytes
    dst_ip: str  # "255.255.255.255" or the client's address
    dst_mac: str  # "ff:ff:ff:ff:ff:ff" or the client's chaddr, "aa:bb:..."
    msg_type: int  # w.OFFER, w.ACK or w.NAK


# -- events (drained with DhcpServer.events()) ------------------------------------------------
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


class _Drop(Exception):
    """No reply: ``reason`` names the counter (drop.<reason>)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


def _mac_str(raw: bytes) -> str:
    return raw[:6].hex(":")


class DhcpServer:
    def __init__(self, config: DhcpConfig):
        self.cfg = config
        self.counters: dict[str, int] = {}
        self.last_error = ""  # why the last message was dropped (for an adapter's rate-limited log)
        self._events: list = []
        self._static_by_ip = {ip: mac for mac, ip in config.static_leases.items()}
        net = config.subnet
        self._excluded = set(config.excluded) | {config.server_ip, net.network_address, net.broadcast_address}
        if config.router is not None:
            self._excluded.add(config.router)
        self._pool_lo, self._pool_hi = int(config.pool_start), int(config.pool_end)
        self._pool_size = (self._pool_hi - self._pool_lo + 1) - sum(
            1 for a in self._excluded | set(self._static_by_ip) if self._pool_lo <= int(a) <= self._pool_hi)
        self._next_free = self._pool_lo
        self.table = LeaseTable(self._pool_addr)
        self._opts = ReplyOptions(config)
        self._server_id = config.server_ip.packed
        self._handlers = {w.DISCOVER: self._discover, w.REQUEST: self._request, w.DECLINE: self._decline,
                          w.RELEASE: self._release, w.INFORM: self._inform}

    @property
    def by_ip(self) -> dict:
        return self.table.by_ip

    # -- persistence -------------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"version": SNAPSHOT_VERSION,
                "leases": [le.as_dict() for le in self.table if le.state != OFFERED]}

    @classmethod
    def restore(cls, config: DhcpConfig, snapshot: dict | None, now: float) -> "DhcpServer":
        """A server with the leases of ``snapshot`` (from ``snapshot()``), skipping (and counting
        as ``restore_skipped``) records that are malformed or that the config no longer allows.
        Leases that ran out meanwhile are expired without events."""
        srv = cls(config)
        records = snapshot.get("leases", []) if isinstance(snapshot, dict) else []
        for d in records if isinstance(records, list) else []:
            try:
                mac = normalize_mac(d["mac"])
                ip = IPv4(d["ip"])
                state = str(d["state"])
                expires = float(d["expires"])
                hostname = sanitize_hostname(str(d.get("hostname", "")))
                cid = str(d.get("client_id", ""))
                if state not in STATES or state == OFFERED or expires != expires:
                    raise ValueError(state)
            except (KeyError, ValueError, TypeError, AttributeError):
                srv._count("restore_skipped")
                continue
            static = config.static_leases.get(mac)
            if not srv._assignable(ip, mac) or (static is not None and static != ip) or ip in srv.table.by_ip:
                srv._count("restore_skipped")
                continue
            lease = Lease(mac, ip, state, expires, hostname, cid)
            srv.table.put(lease)
            if state == DECLINED:
                srv.table.detach(lease)
        srv.expire(now)
        srv._events.clear()
        return srv

    # -- bookkeeping -------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def events(self) -> list:
        ev, self._events = self._events, []
        return ev

    def leases(self) -> list[dict]:
        """Every record (all states) as a dict: mac, ip, state, expires, hostname, client_id."""
        return [le.as_dict() for le in sorted(self.table, key=lambda x: int(x.ip))]

    def lease_for(self, mac: str) -> Lease | None:
        return self.table.by_mac.get(normalize_mac(mac))

    def expire(self, now: float) -> None:
        """Move on every record whose deadline has passed."""
        for le in self.table.pop_due(now):
            if le.state == BOUND:
                self.table.update(le, EXPIRED, le.expires)
                self._count("expired")
                self._events.append(LeaseExpired(le.mac, str(le.ip), le.hostname))
            elif le.state == OFFERED and le.prev_state in FREE:
                self.table.update(le, le.prev_state, le.expires)
            else:  # offered, declined
                self.table.remove(le)

    def next_expiry(self) -> float | None:
        """When ``expire`` next has something to do (None: nothing pending)."""
        return self.table.next_deadline()

    # -- address policy ----------------------------------------------------------------------
    def _pool_addr(self, ip: IPv4) -> bool:
        """In the dynamic pool: in range, not excluded, not reserved for a static lease."""
        return (self._pool_lo <= int(ip) <= self._pool_hi and ip not in self._excluded
                and ip not in self._static_by_ip)

    def _assignable(self, ip: IPv4, mac: str) -> bool:
        """``ip`` may ever be given to ``mac`` (whoever holds it now)."""
        owner = self._static_by_ip.get(ip)
        if owner is not None:
            return owner == mac and ip not in self._excluded
        return self._pool_addr(ip)

    def _available(self, ip: IPv4, mac: str) -> bool:
        """``ip`` may be given to ``mac`` now: assignable and not held by another client."""
        if not self._assignable(ip, mac):
            return False
        le = self.table.by_ip.get(ip)
        if le is None:
            return True
        if le.mac == mac and self.table.by_mac.get(mac) is le:
            return le.state != DECLINED
        return le.state in FREE

    def _never_used(self) -> IPv4 | None:
        if self.table.pool_used >= self._pool_size:
            return None
        lo, size = self._pool_lo, self._pool_hi - self._pool_lo + 1
        by_ip = self.table.by_ip
        start = self._next_free - lo
        for i in range(size):
            cand = IPv4(lo + (start + i) % size)
            if cand not in by_ip and self._pool_addr(cand):
                self._next_free = int(cand) + 1
                return cand
        return None

    def _allocate(self, mac: str, requested: IPv4 | None) -> IPv4 | None:
        static = self.cfg.static_leases.get(mac)
        if static is not None:
            return static if static not in self._excluded else None
        prev = self.table.by_mac.get(mac)
        if prev is not None and prev.state != DECLINED and self._assignable(prev.ip, mac):
            return prev.ip
        if requested is not None and self._available(requested, mac):
            return requested
        ip = self._never_used()
        if ip is not None:
            return ip
        for le in self.table.oldest("free"):
            if self._pool_addr(le.ip):
                return le.ip
        for le in self.table.oldest(OFFERED):
            if le.mac != mac and self._pool_addr(le.ip):
                self._count("offers_reclaimed")
                return le.ip
        return None

    def _make_room(self, mac: str) -> bool:
        """Room for one more record: evict the oldest free record, offer or quarantine."""
        table = self.table
        if len(table) < self.cfg.max_leases:
            return True
        for queue in ("free", OFFERED, DECLINED):
            for le in table.oldest(queue):
                if le.mac != mac:
                    table.remove(le)
                    self._count("evicted")
                    return True
        return False

    # -- messages ----------------------------------------------------------------------------
    def handle(self, data: bytes, now: float) -> Reply | None:
        """The reply to one message from a client (a UDP payload to port 67), or None. Never
        raises for anything in ``data``: what cannot be served is counted as drop.<reason>."""
        try:
            try:
                msg = w.parse(data)
            except w.DhcpError as e:
                raise _Drop("malformed", str(e)) from None
            if msg.op != w.BOOTREQUEST:
                raise _Drop("not_request", "not a BOOTREQUEST")
            if msg.giaddr != w.ZERO_IP:
                raise _Drop("relayed", "relayed messages are not served")
            mtype = msg.msg_type
            handler = self._handlers.get(mtype)
            if handler is None:
                raise _Drop("bad_type", f"message type {mtype} is not for a server")
            self.expire(now)
            return handler(msg, now)
        except _Drop as d:
            self._count("drop." + d.reason)
            self.last_error = str(d)
            return None
        except w.DhcpError as e:  # a malformed option found while serving
            self._count("drop.malformed")
            self.last_error = str(e)
            return None

    def _hostname(self, msg: w.DhcpMessage) -> str:
        if w.OPT_HOSTNAME in msg.options:
            name = sanitize_hostname(w.decode_hostname(msg.options[w.OPT_HOSTNAME]))
            if name:
                return name
        if w.OPT_FQDN in msg.options:
            try:
                return sanitize_hostname(w.decode_fqdn(msg.options[w.OPT_FQDN])[1])
            except w.DhcpError:
                self._count("bad_fqdn")
        return ""

    def _our_server_id(self, msg: w.DhcpMessage) -> bool | None:
        sid = msg.ip_option(w.OPT_SERVER_ID)
        return None if sid is None else sid == self._server_id

    def _discover(self, msg: w.DhcpMessage, now: float) -> Reply:
        mac = _mac_str(msg.chaddr)
        cid = w.decode_client_id(msg.options.get(w.OPT_CLIENT_ID))
        req = msg.ip_option(w.OPT_REQUESTED_IP)
        ip = self._allocate(mac, IPv4(req) if req else None)
        if ip is None:
            raise _Drop("no_address", f"no address for {mac}")
        table = self.table
        mine = table.by_mac.get(mac)
        if not (mine is not None and mine.ip == ip and mine.state == BOUND):
            held = table.by_ip.get(ip)
            if held is None and mine is None and not self._make_room(mac):
                raise _Drop("table_full", f"lease table full ({len(table)})")
            prev_state = ""
            if mine is not None and mine.ip == ip:
                prev_state = mine.state if mine.state in FREE else mine.prev_state
            hostname = self._hostname(msg) or (mine.hostname if mine is not None else "")
            table.put(Lease(mac, ip, OFFERED, now + self.cfg.offer_timeout, hostname, cid, prev_state))
        self._count("offers")
        self._events.append(Offered(mac, str(ip)))
        return self._reply(msg, w.OFFER, ip)

    def _request(self, msg: w.DhcpMessage, now: float) -> Reply | None:
        mac = _mac_str(msg.chaddr)
        cid = w.decode_client_id(msg.options.get(w.OPT_CLIENT_ID))
        ours = self._our_server_id(msg)
        table = self.table
        mine = table.by_mac.get(mac)
        if ours is False:  # SELECTING another server's offer
            if mine is not None and mine.state == OFFERED:
                if mine.prev_state in FREE:
                    table.update(mine, mine.prev_state, now)
                else:
                    table.remove(mine)
            raise _Drop("other_server", f"{mac} chose another server")
        req = msg.ip_option(w.OPT_REQUESTED_IP)
        if req is not None:
            ip = IPv4(req)
        elif msg.ciaddr != w.ZERO_IP:
            ip = IPv4(msg.ciaddr)
        else:
            return self._nak(msg, mac, "REQUEST without an address")
        if ip not in self.cfg.subnet:
            return self._nak(msg, mac, f"{ip} is not on {self.cfg.subnet}")
        static = self.cfg.static_leases.get(mac)
        if static is not None and static != ip:
            return self._nak(msg, mac, f"{mac} has the static address {static}")
        if mine is not None and mine.ip == ip and mine.state != DECLINED:
            if not self._assignable(ip, mac):
                return self._nak(msg, mac, f"{ip} is not in the pool")
        else:
            if ours is None and mine is not None and mine.state == BOUND:
                return self._nak(msg, mac, f"{mac} has {mine.ip}, not {ip}")
            if not self._available(ip, mac):
                return self._nak(msg, mac, f"{ip} is not available to {mac}")
            if table.by_ip.get(ip) is None and mine is None and not self._make_room(mac):
                raise _Drop("table_full", f"lease table full ({len(table)})")
        hostname = self._hostname(msg) or (mine.hostname if mine is not None else "")
        lease = Lease(mac, ip, BOUND, now + self.cfg.lease_time, hostname, cid or (mine.client_id if mine else ""))
        table.put(lease)
        self._count("acks")
        self._events.append(LeaseGranted(mac, str(ip), hostname, lease.expires))
        return self._reply(msg, w.ACK, ip)

    def _decline(self, msg: w.DhcpMessage, now: float) -> None:
        mac = _mac_str(msg.chaddr)
        if self._our_server_id(msg) is False:
            raise _Drop("other_server", "DECLINE to another server")
        req = msg.ip_option(w.OPT_REQUESTED_IP)
        if req is None:
            raise _Drop("malformed", "DECLINE without a requested address")
        ip = IPv4(req)
        le = self.table.by_ip.get(ip)
        if le is None or le.mac != mac or self.table.by_mac.get(mac) is not le or le.state not in (OFFERED, BOUND):
            raise _Drop("decline_unknown", f"DECLINE of {ip}, which {mac} does not hold")
        if ip in self._static_by_ip:
            self.table.remove(le)  # nothing else to give it; recorded only
        else:
            le.prev_state = ""
            self.table.update(le, DECLINED, now + self.cfg.decline_hold)
            self.table.detach(le)  # its next DISCOVER gets another address
        self._count("declines")
        self._events.append(LeaseDeclined(mac, str(ip)))
        return None

    def _release(self, msg: w.DhcpMessage, now: float) -> None:
        mac = _mac_str(msg.chaddr)
        if self._our_server_id(msg) is False:
            raise _Drop("other_server", "RELEASE to another server")
        le = self.table.by_mac.get(mac)
        if le is None or le.state != BOUND or le.ip.packed != msg.ciaddr:
            raise _Drop("release_unknown", f"RELEASE of {IPv4(msg.ciaddr)}, which {mac} does not hold")
        self.table.update(le, RELEASED, now)
        self._count("releases")
        self._events.append(LeaseReleased(mac, str(le.ip), le.hostname))
        return None

    def _inform(self, msg: w.DhcpMessage, now: float) -> Reply:
        if msg.ciaddr == w.ZERO_IP or IPv4(msg.ciaddr) not in self.cfg.subnet:
            raise _Drop("inform_bad", "INFORM without an address on this network")
        self._count("informs")
        return self._reply(msg, w.ACK, None)

    # -- replies -----------------------------------------------------------------------------
    def _max_size(self, msg: w.DhcpMessage) -> int:
        size = msg.max_message_size()
        if self.cfg.mtu:
            size = min(size, self.cfg.mtu - w.IP_UDP_OVERHEAD)
        return max(size, w.MIN_MAX_MESSAGE - w.IP_UDP_OVERHEAD)

    def _nak(self, msg: w.DhcpMessage, mac: str, reason: str) -> Reply:
        self._count("naks")
        self._events.append(Nak(mac, reason))
        opts = {w.OPT_MSG_TYPE: bytes((w.NAK,)), w.OPT_SERVER_ID: self._server_id,
                w.OPT_MESSAGE: reason.encode("ascii", "replace")[:250]}
        if w.OPT_CLIENT_ID in msg.options:
            opts[w.OPT_CLIENT_ID] = msg.options[w.OPT_CLIENT_ID]
        out = w.DhcpMessage(op=w.BOOTREPLY, xid=msg.xid, flags=msg.flags, giaddr=msg.giaddr, chaddr=msg.chaddr,
                            options=opts)
        # RFC 2131 4.1: with giaddr zero, a NAK is always broadcast.
        return Reply(out.encode(), BROADCAST_IP, BROADCAST_MAC, w.NAK)

    def _reply(self, msg: w.DhcpMessage, mtype: int, ip: IPv4 | None) -> Reply:
        lease = ip is not None
        prl = w.decode_param_list(msg.options.get(w.OPT_PARAM_LIST))
        opts = self._opts.build(mtype, prl, lease, msg.options.get(w.OPT_CLIENT_ID))
        out = w.DhcpMessage(op=w.BOOTREPLY, xid=msg.xid, flags=msg.flags,
                            ciaddr=msg.ciaddr if mtype == w.ACK else w.ZERO_IP,
                            yiaddr=ip.packed if lease else w.ZERO_IP, siaddr=self._server_id,
                            giaddr=msg.giaddr, chaddr=msg.chaddr, options=opts)
        mac = _mac_str(msg.chaddr)
        # RFC 2131 4.1 (giaddr is zero: relayed messages are dropped): unicast to ciaddr when
        # set; else broadcast when asked; else unicast to yiaddr at chaddr.
        if msg.ciaddr != w.ZERO_IP:
            dst_ip, dst_mac = str(IPv4(msg.ciaddr)), mac
        elif msg.flags & w.FLAG_BROADCAST or not lease:
            dst_ip, dst_mac = BROADCAST_IP, BROADCAST_MAC
        else:
            dst_ip, dst_mac = str(ip), mac
        return Reply(out.encode(max_size=self._max_size(msg)), dst_ip, dst_mac, mtype)
