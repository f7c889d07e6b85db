"""Reply options: encoded once from the config, ordered per the client's parameter request list,
and the hostname a client gives us turned into a DNS label."""
from __future__ import annotations

import ipaddress
import re

from wire import dhcp as w

# Sent whether asked for or not (after the asked-for ones), in this order.
ESSENTIAL = (w.OPT_SUBNET_MASK, w.OPT_ROUTER, w.OPT_DNS, w.OPT_DOMAIN, w.OPT_SEARCH, w.OPT_MTU,
             w.OPT_BROADCAST, w.OPT_LEASE_TIME, w.OPT_T1, w.OPT_T2, w.OPT_CLASSLESS)
LEASE_ONLY = frozenset({w.OPT_LEASE_TIME, w.OPT_T1, w.OPT_T2})
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")


class ReplyOptions:
    """The option values of a config, encoded once. ``build`` returns the options of one reply."""

    def __init__(self, cfg):
        o: dict[int, bytes] = {w.OPT_SUBNET_MASK: w.encode_ip(cfg.subnet.netmask)}
        if cfg.router is not None:
            o[w.OPT_ROUTER] = w.encode_ip(cfg.router)
        if cfg.dns_servers:
            o[w.OPT_DNS] = w.encode_ips(cfg.dns_servers)
        if cfg.domain_name:
            o[w.OPT_DOMAIN] = w.encode_text(cfg.domain_name)
        if cfg.search_domains:
            search = w.encode_search(cfg.search_domains)
            if search:
                o[w.OPT_SEARCH] = search
        if cfg.mtu:
            o[w.OPT_MTU] = w.encode_u16(cfg.mtu)
        o[w.OPT_BROADCAST] = w.encode_ip(cfg.subnet.broadcast_address)
        o[w.OPT_LEASE_TIME] = w.encode_u32(cfg.lease_time)
        o[w.OPT_T1] = w.encode_u32(cfg.lease_time // 2)
        o[w.OPT_T2] = w.encode_u32(cfg.lease_time * 7 // 8)
        if cfg.classless_routes:
            routes = [(ipaddress.IPv4Network(n), ipaddress.IPv4Address(g)) for n, g in cfg.classless_routes]
            # RFC 3442: a client that gets option 121 ignores option 3, so the default route
            # must be in 121 as well.
            if cfg.router is not None and not any(n.prefixlen == 0 for n, _ in routes):
                routes.append((DEFAULT_ROUTE, cfg.router))
            o[w.OPT_CLASSLESS] = w.encode_classless(routes)
        self.values = o
        self.server_id = w.encode_ip(cfg.server_ip)
        self._default_order = [c for c in ESSENTIAL if c in o]

    def build(self, mtype: int, requested: list[int], lease: bool, client_id: bytes | None = None) -> dict[int, bytes]:
        """Options for a reply of type ``mtype``: message type and server id, then what the
        client asked for in its order, then the rest of the essentials. Lease times only with
        ``lease``; the client identifier is echoed (RFC 6842)."""
        vals = self.values
        out = {w.OPT_MSG_TYPE: bytes((mtype,)), w.OPT_SERVER_ID: self.server_id}
        for code in requested:
            if code in vals and (lease or code not in LEASE_ONLY):
                out[code] = vals[code]
        for code in self._default_order:
            if code not in out and (lease or code not in LEASE_ONLY):
                out[code] = vals[code]
        if client_id is not None:
            out[w.OPT_CLIENT_ID] = client_id
        return out


_LABEL_BAD = re.compile(r"[^a-z0-9-]+")


def sanitize_hostname(raw: bytes | str) -> str:
    """A valid DNS label (RFC 1123: letters, digits, inner hyphens, at most 63) from the first
    label of a client-supplied hostname; "" when nothing usable is left."""
    if isinstance(raw, bytes):
        raw = raw.split(b"\0")[0].decode("ascii", "ignore")
    text = raw.strip().lower().split(".")[0]
    text = _LABEL_BAD.sub("-", text).strip("-")
    return text[:63].strip("-")
