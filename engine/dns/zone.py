"""The local zone: names for the host, the gateway, aliases, every guest (from DHCP), static
and runtime records, and PTR for all of them. Answers NOERROR, NODATA (SOA in authority) or
NXDOMAIN for names it owns; None for names it does not (those are forwarded)."""
from __future__ import annotations

import ipaddress

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSLabel

SUPPORTED = ("A", "AAAA", "CNAME", "TXT", "SRV", "MX", "PTR")


def norm(name: str) -> str:
    return str(name).rstrip(".").lower()


def make_rdata(rtype: str, value: str):
    """dnslib rdata from the text form users type; ValueError with a clear message if bad."""
    rtype = rtype.upper()
    try:
        if rtype == "A":
            return A(str(ipaddress.IPv4Address(value)))
        if rtype == "AAAA":
            return AAAA(str(ipaddress.IPv6Address(value)))
        if rtype in ("CNAME", "PTR"):
            if not value.strip():
                raise ValueError("empty target")
            return (CNAME if rtype == "CNAME" else PTR)(value.strip())
        if rtype == "TXT":
            return TXT(value)
        if rtype == "MX":
            pref, host = value.split()
            return MX(host, int(pref))
        if rtype == "SRV":
            prio, weight, port, target = value.split()
            return SRV(int(prio), int(weight), int(port), target)
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad {rtype} value {value!r}: {e}") from None
    raise ValueError(f"record type {rtype!r} is not supported (use one of {', '.join(SUPPORTED)})")


class Record:
    __slots__ = ("name", "rtype", "value", "ttl", "source", "rdata")

    def __init__(self, name: str, rtype: str, value: str, ttl: int, source: str):
        self.name, self.rtype, self.value, self.ttl, self.source = norm(name), rtype.upper(), value, int(ttl), source
        self.rdata = make_rdata(self.rtype, value)

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.rtype, "value": self.value, "ttl": self.ttl, "source": self.source}


class LocalZone:
    def __init__(self, *, domain: str, gateway: str, host_alias: str, subnet: str, aliases=(), ttl: int = 60):
        self.domain = norm(domain)
        self.ttl = ttl
        self.subnet = ipaddress.IPv4Network(subnet)
        self.records: dict[str, list[Record]] = {}
        self.extra_names: set[str] = set()  # owned names outside the domain (aliases, static)
        self.add(f"host.{self.domain}", "A", host_alias, ttl, "builtin")
        self.add(f"gateway.{self.domain}", "A", gateway, ttl, "builtin")
        for alias in aliases:
            target = gateway if norm(alias).startswith("gateway.") else host_alias
            self.add(alias, "A", target, ttl, "builtin")
        self.soa = SOA(f"ns.{self.domain}", f"hostmaster.{self.domain}", (1, 3600, 600, 86400, ttl))

    # -- records -----------------------------------------------------------------------
    def add(self, name: str, rtype: str, value: str, ttl: int | None = None, source: str = "runtime") -> Record:
        rec = Record(name, rtype, value, self.ttl if ttl is None else ttl, source)
        lst = self.records.setdefault(rec.name, [])
        lst[:] = [r for r in lst if not (r.rtype == rec.rtype and r.value == rec.value)]
        lst.append(rec)
        if not self._in_domain(rec.name):
            self.extra_names.add(rec.name)
        if rec.rtype in ("A", "AAAA") and source != "guest":
            pass
        return rec

    def remove(self, name: str, rtype: str | None = None, value: str | None = None, source: str | None = None) -> int:
        name = norm(name)
        lst = self.records.get(name, [])
        keep = [r for r in lst if not ((rtype is None or r.rtype == rtype.upper()) and (value is None or r.value == value)
                                      and (source is None or r.source == source))]
        removed = len(lst) - len(keep)
        if keep:
            self.records[name] = keep
        else:
            self.records.pop(name, None)
            self.extra_names.discard(name)
        return removed

    def _in_domain(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)

    def _reverse_owned(self, name: str) -> bool:
        if not name.endswith(".in-addr.arpa"):
            return False
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4:
            return False
        try:
            ip = ipaddress.IPv4Address(".".join(reversed(parts)))
        except ValueError:
            return False
        return ip in self.subnet

    def owns(self, name: str) -> bool:
        name = norm(name)
        return self._in_domain(name) or name in self.extra_names or self._reverse_owned(name)

    def _ptr_records(self, name: str) -> list:
        """PTR answers synthesised from every A record in the zone (plus explicit PTRs)."""
        out = [r for r in self.records.get(name, []) if r.rtype == "PTR"]
        if name.endswith(".in-addr.arpa"):
            ip = ".".join(reversed(name[: -len(".in-addr.arpa")].split(".")))
            for owner, recs in self.records.items():
                for r in recs:
                    if r.rtype == "A" and r.value == ip and self._in_domain(owner):
                        out.append(Record(name, "PTR", owner + ".", r.ttl, "synth"))
        return out

    # -- answers -----------------------------------------------------------------------
    def answer(self, qname: str, qtype: int):
        """(rcode, [RR answers], [RR authority]) for an owned name, else None."""
        name = norm(qname)
        if not self.owns(name):
            return None
        answers: list = []
        seen = set()
        qt = QTYPE[qtype] if qtype in QTYPE.forward else str(qtype)
        while name not in seen:
            seen.add(name)
            recs = self._ptr_records(name) if qt == "PTR" else self.records.get(name, [])
            exact = [r for r in recs if r.rtype == qt or qt == "ANY"]
            if exact:
                answers += [RR(DNSLabel(name), getattr(QTYPE, r.rtype), rdata=r.rdata, ttl=r.ttl) for r in exact]
                return RCODE.NOERROR, answers, []
            cname = [r for r in self.records.get(name, []) if r.rtype == "CNAME"]
            if cname and qt != "CNAME":
                answers.append(RR(DNSLabel(name), QTYPE.CNAME, rdata=cname[0].rdata, ttl=cname[0].ttl))
                target = norm(cname[0].value)
                if not self.owns(target):
                    return RCODE.NOERROR, answers, []  # the resolver client chases it
                name = target
                continue
            break
        soa = [RR(DNSLabel(self.domain), QTYPE.SOA, rdata=self.soa, ttl=self.ttl)]
        if answers:
            return RCODE.NOERROR, answers, []
        if self._name_exists(name):
            return RCODE.NOERROR, [], soa  # NODATA
        return RCODE.NXDOMAIN, [], soa

    def _name_exists(self, name: str) -> bool:
        if name in self.records or name == self.domain:
            return True
        if self._reverse_owned(name):
            return bool(self._ptr_records(name))
        suffix = "." + name  # an empty non-terminal (e.g. "gangway.internal" parents) exists too
        return any(n.endswith(suffix) for n in self.records)

    def runtime_records(self) -> list[dict]:
        return [r.as_dict() for recs in self.records.values() for r in recs if r.source == "runtime"]

    def all_records(self) -> list[dict]:
        return [r.as_dict() for recs in self.records.values() for r in recs]
