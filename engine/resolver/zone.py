"""The local zone: what gangway answers itself, authoritatively.

Owned names
- everything under ``domain`` (default ``gangway.internal``): ``host.``/``gateway.`` built in,
  one ``NAME.domain`` per guest (its DHCP hostname), static and runtime records;
- configured aliases (``host.docker.internal`` ...) and any static/runtime record outside the
  domain: exactly those names (their subdomains are forwarded);
- reverse names (``in-addr.arpa``/``ip6.arpa``) of addresses in the guest subnet, and of every
  local A/AAAA record.

Answers, for an owned name (``answer`` returns None for any other name, which is forwarded)
- records of the asked type: NOERROR with them;
- a CNAME (and the type asked is not CNAME): the CNAME, then the chain is followed inside the
  local data (loops and chains longer than ``MAX_CHAIN`` stop); a target outside it is left
  to the caller (``Answer.chase``);
- the name exists (it has records of other types, or names below it: an empty non-terminal)
  but nothing of that type: NODATA = NOERROR, empty answer, SOA in authority (RFC 2308);
- otherwise NXDOMAIN with the SOA.

PTR: explicit PTR records win; else one PTR per address, to the first name that claimed it
(built-ins first, then guests, then static/runtime A/AAAA records).

Sources, in precedence order: ``builtin`` (host, gateway, aliases), ``guest``, ``static``
(config), ``runtime`` (added while running; the only ones persisted by the caller).
"""
from __future__ import annotations

import ipaddress
import itertools
import re
from typing import NamedTuple

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSLabel

SUPPORTED = ("A", "AAAA", "CNAME", "TXT", "SRV", "MX", "PTR")
SOURCES = ("builtin", "guest", "static", "runtime")
MAX_CHAIN = 8
MAX_TTL = 86400 * 7
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_HOSTLABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def norm(name) -> str:
    return str(name).strip().rstrip(".").lower()


def check_name(name: str) -> str:
    """The normalised name, or ValueError saying what is wrong with it."""
    n = norm(name)
    if not n:
        raise ValueError("empty name")
    if len(n) > 253:
        raise ValueError(f"name {name!r} is longer than 253 characters")
    for label in n.split("."):
        if label == "*" and n.startswith("*."):
            raise ValueError("wildcard names are not supported")
        if not _LABEL.match(label):
            raise ValueError(f"bad label {label!r} in {name!r} (letters, digits, '-', '_'; 1-63 characters)")
    return n


def check_hostname(hostname: str) -> str:
    """A guest's DHCP hostname as a single DNS label, or ValueError."""
    n = norm(hostname).split(".")[0]
    if not _HOSTLABEL.match(n):
        raise ValueError(f"bad hostname {hostname!r}")
    return n


def make_rdata(rtype: str, value: str):
    """dnslib rdata from the text form a user types; ValueError with a clear message if bad.

    A "192.0.2.1" | AAAA "fd00::1" | CNAME/PTR "target.name" | TXT "any text" (split into
    255-byte strings) | MX "10 mail.example" | SRV "0 5 5060 sip.example".
    """
    rtype = str(rtype).upper()
    value = str(value)
    if rtype not in SUPPORTED:
        raise ValueError(f"record type {rtype!r} is not supported (use one of {', '.join(SUPPORTED)})")
    try:
        if rtype == "A":
            return A(str(ipaddress.IPv4Address(value.strip())))
        if rtype == "AAAA":
            return AAAA(str(ipaddress.IPv6Address(value.strip())))
        if rtype in ("CNAME", "PTR"):
            return (CNAME if rtype == "CNAME" else PTR)(check_name(value))
        if rtype == "TXT":
            data = value.encode()
            if len(data) > 4000:
                raise ValueError("longer than 4000 bytes")
            return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])
        if rtype == "MX":
            pref, host = value.split()
            if not 0 <= int(pref) <= 65535:
                raise ValueError("preference out of range 0-65535")
            return MX(check_name(host), int(pref))
        prio, weight, port, target = value.split()  # SRV
        nums = [int(prio), int(weight), int(port)]
        if not all(0 <= x <= 65535 for x in nums):
            raise ValueError("priority/weight/port out of range 0-65535")
        return SRV(*nums, check_name(target) if target != "." else ".")
    except ValueError as e:
        raise ValueError(f"bad {rtype} value {value!r}: {e}") from None


def canonical_value(rtype: str, value: str) -> str:
    """The text form a record is stored and compared under (addresses normalised)."""
    rtype = rtype.upper()
    if rtype == "A":
        return str(ipaddress.IPv4Address(value.strip()))
    if rtype == "AAAA":
        return str(ipaddress.IPv6Address(value.strip()))
    if rtype in ("CNAME", "PTR"):
        return norm(value)
    if rtype in ("MX", "SRV"):
        return " ".join(norm(p) for p in value.split())
    return value


def reverse_name(ip: str) -> str:
    return norm(ipaddress.ip_address(ip).reverse_pointer)


def reverse_to_ip(name: str):
    """The address a reverse name stands for, or None when it is not a full one."""
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
            try:
                return ipaddress.IPv4Address(".".join(reversed(parts)))
            except ValueError:
                return None
    elif name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) == 32 and all(len(x) == 1 and x in "0123456789abcdef" for x in nibbles):
            h = "".join(reversed(nibbles))
            return ipaddress.IPv6Address(":".join(h[i : i + 4] for i in range(0, 32, 4)))
    return None


class Record:
    __slots__ = ("name", "rtype", "value", "ttl", "source", "rdata", "seq")
    _seq = itertools.count()

    def __init__(self, name: str, rtype: str, value: str, ttl: int, source: str):
        self.rtype = str(rtype).upper()
        self.rdata = make_rdata(self.rtype, value)
        self.name = check_name(name)
        self.value = canonical_value(self.rtype, value)
        try:
            self.ttl = int(ttl)
        except (TypeError, ValueError):
            raise ValueError(f"bad ttl {ttl!r}") from None
        if not 0 <= self.ttl <= MAX_TTL:
            raise ValueError(f"ttl {self.ttl} out of range 0-{MAX_TTL}")
        if source not in SOURCES:
            raise ValueError(f"bad source {source!r}")
        self.source = source
        self.seq = next(Record._seq)

    def rr(self, owner: str | None = None) -> RR:
        return RR(DNSLabel(owner or self.name), getattr(QTYPE, self.rtype), rdata=self.rdata, ttl=self.ttl)

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.rtype, "value": self.value, "ttl": self.ttl, "source": self.source}


class Answer(NamedTuple):
    rcode: int
    answers: list  # RRs
    authority: list  # RRs (the SOA for NODATA / NXDOMAIN)
    chase: str | None = None  # a CNAME target outside the local data, still to resolve


class LocalZone:
    def __init__(self, *, domain: str = "gangway.internal", gateway: str = "192.168.65.1",
                 host_alias: str = "192.168.65.254", subnet: str = "192.168.65.0/24", aliases=(), ttl: int = 60):
        self.domain = check_name(domain)
        self.ttl = int(ttl)
        self.subnet = ipaddress.ip_network(subnet, strict=False)
        self.records: dict[str, list[Record]] = {}
        self.soa = SOA(f"ns.{self.domain}", f"hostmaster.{self.domain}", (1, 3600, 600, 86400, self.ttl))
        self.add(f"host.{self.domain}", "A", host_alias, source="builtin")
        self.add(f"gateway.{self.domain}", "A", gateway, source="builtin")
        for alias in aliases:
            target = gateway if norm(alias).startswith("gateway.") else host_alias
            self.add(alias, "A", target, source="builtin")
        self.reserved = {f"host.{self.domain}", f"gateway.{self.domain}"} | {norm(a) for a in aliases}

    # -- changing the data -------------------------------------------------------------------
    def add(self, name: str, rtype: str, value: str, ttl: int | None = None, source: str = "runtime") -> Record:
        """Add (or replace the identical) record; ValueError if it is bad or conflicts."""
        rec = Record(name, rtype, value, self.ttl if ttl is None else ttl, source)
        if source in ("static", "runtime") and rec.name in getattr(self, "reserved", ()):
            raise ValueError(f"{rec.name} is a built-in name")
        lst = self.records.get(rec.name, [])
        others = [r for r in lst if not (r.rtype == rec.rtype and r.value == rec.value)]
        if rec.rtype == "CNAME" and any(r.rtype != "CNAME" or r.value != rec.value for r in others):
            raise ValueError(f"{rec.name} already has records; a CNAME cannot coexist with them")
        if rec.rtype != "CNAME" and any(r.rtype == "CNAME" for r in others):
            raise ValueError(f"{rec.name} is a CNAME; no other records can be added to it")
        self.records[rec.name] = others + [rec]
        return rec

    def remove(self, name: str, rtype: str | None = None, value: str | None = None,
               source: str | None = None) -> int:
        """Remove matching records; the number removed."""
        name = norm(name)
        rtype = rtype.upper() if rtype else None
        if value is not None and rtype:
            try:
                value = canonical_value(rtype, value)
            except ValueError:
                return 0
        lst = self.records.get(name, [])
        keep = [r for r in lst if not ((rtype is None or r.rtype == rtype) and (value is None or r.value == value)
                                       and (source is None or r.source == source))]
        if keep:
            self.records[name] = keep
        else:
            self.records.pop(name, None)
        return len(lst) - len(keep)

    def records_of(self, source: str) -> list[dict]:
        return [r.as_dict() for recs in self.records.values() for r in recs if r.source == source]

    def all_records(self) -> list[dict]:
        order = {s: i for i, s in enumerate(SOURCES)}
        out = [r for recs in self.records.values() for r in recs]
        out.sort(key=lambda r: (order[r.source], r.name, r.rtype, r.value))
        return [r.as_dict() for r in out]

    # -- ownership ---------------------------------------------------------------------------
    def in_domain(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)

    def _ptr_for(self, name: str) -> list[RR]:
        explicit = [r.rr() for r in self.records.get(name, []) if r.rtype == "PTR"]
        if explicit:
            return explicit
        ip = reverse_to_ip(name)
        if ip is None:
            return []
        rtype = "A" if ip.version == 4 else "AAAA"
        order = {s: i for i, s in enumerate(SOURCES)}
        owners = [(order[r.source], not self.in_domain(owner), r.seq, owner) for owner, recs in self.records.items()
                  for r in recs if r.rtype == rtype and ipaddress.ip_address(r.value) == ip]
        if not owners:
            return []
        owner = min(owners)[-1]
        return [RR(DNSLabel(name), QTYPE.PTR, rdata=PTR(owner), ttl=self.ttl)]

    def owns(self, name: str) -> bool:
        name = norm(name)
        if self.in_domain(name) or name in self.records:
            return True
        ip = reverse_to_ip(name)
        return ip is not None and (ip in self.subnet or bool(self._ptr_for(name)))

    def _exists(self, name: str) -> bool:
        if name in self.records or name == self.domain:
            return True
        if reverse_to_ip(name) is not None:
            return bool(self._ptr_for(name))
        suffix = "." + name  # an empty non-terminal exists too
        return any(n.endswith(suffix) for n in self.records)

    def _apex(self, name: str) -> str:
        if self.in_domain(name):
            return self.domain
        ip = reverse_to_ip(name)
        if ip is not None and ip in self.subnet:
            if ip.version == 4 and self.subnet.prefixlen % 8 == 0 and self.subnet.prefixlen >= 8:
                octets = str(self.subnet.network_address).split(".")[: self.subnet.prefixlen // 8]
                return ".".join(reversed(octets)) + ".in-addr.arpa"
        return name

    def _soa(self, name: str) -> list[RR]:
        return [RR(DNSLabel(self._apex(name)), QTYPE.SOA, rdata=self.soa, ttl=self.ttl)]

    # -- answering ---------------------------------------------------------------------------
    def _rrs(self, name: str, qtype: int) -> list[RR]:
        if qtype == QTYPE.PTR:
            return self._ptr_for(name)
        if qtype == QTYPE.SOA and name == self.domain:
            return self._soa(name)
        recs = self.records.get(name, [])
        if qtype == QTYPE.ANY:
            out = [r.rr() for r in recs]
            return out + (self._ptr_for(name) if not any(r.rtype == "PTR" for r in recs) else [])
        return [r.rr() for r in recs if getattr(QTYPE, r.rtype) == qtype]

    def answer(self, qname, qtype: int) -> Answer | None:
        """The authoritative answer for an owned name; None for a name to forward."""
        name = norm(qname)
        if not self.owns(name):
            return None
        chain: list[RR] = []
        seen: set[str] = set()
        while True:
            rrs = self._rrs(name, qtype)
            if rrs:
                return Answer(RCODE.NOERROR, chain + rrs, [])
            cname = [r for r in self.records.get(name, []) if r.rtype == "CNAME"]
            if not cname or qtype == QTYPE.CNAME:
                break
            seen.add(name)
            chain.append(cname[0].rr())
            target = cname[0].value
            if target in seen or len(chain) >= MAX_CHAIN:
                return Answer(RCODE.NOERROR, chain, [])  # a loop or too long: stop, as answered so far
            if not self.owns(target):
                return Answer(RCODE.NOERROR, chain, [], chase=target)
            name = target
        if chain and not self._exists(name):
            return Answer(RCODE.NXDOMAIN, chain, self._soa(name))
        if chain or self._exists(name):
            return Answer(RCODE.NOERROR, chain, self._soa(name))
        return Answer(RCODE.NXDOMAIN, [], self._soa(name))
