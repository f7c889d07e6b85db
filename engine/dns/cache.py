"""An answer cache keyed by (name, type, class): TTLs honoured and counted down on hits,
negative answers (NXDOMAIN / NODATA) cached for the SOA minimum (RFC 2308), LRU-bounded."""
from __future__ import annotations

from collections import OrderedDict

from dnslib import QTYPE, RCODE, DNSRecord

MAX_TTL = 86400
NEG_DEFAULT = 60


def _ttl_of(rec: DNSRecord) -> int | None:
    """Seconds this answer may be cached, or None when it must not be."""
    rcode = rec.header.rcode
    if rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN) or rec.header.tc:
        return None
    if rec.rr:
        return min(min(rr.ttl for rr in rec.rr), MAX_TTL)
    # negative: SOA in authority gives min(SOA TTL, SOA minimum)
    for rr in rec.auth:
        if rr.rtype == QTYPE.SOA:
            return min(rr.ttl, rr.rdata.times[-1], MAX_TTL)
    return None if rcode == RCODE.NOERROR else NEG_DEFAULT


class AnswerCache:
    def __init__(self, size: int = 10000):
        self.size = size
        self.entries: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(rec: DNSRecord) -> tuple:
        q = rec.q
        return (str(q.qname).lower(), q.qtype, q.qclass)

    def put(self, rec: DNSRecord, now: float) -> None:
        ttl = _ttl_of(rec)
        if not ttl or ttl <= 0:
            return
        k = self.key(rec)
        self.entries[k] = (now, now + ttl, rec.pack())
        self.entries.move_to_end(k)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def get(self, request: DNSRecord, now: float) -> DNSRecord | None:
        k = self.key(request)
        entry = self.entries.get(k)
        if entry is None:
            self.misses += 1
            return None
        stored, expires, wire = entry
        if now >= expires:
            del self.entries[k]
            self.misses += 1
            return None
        self.entries.move_to_end(k)
        self.hits += 1
        rec = DNSRecord.parse(wire)
        age = int(now - stored)
        for section in (rec.rr, rec.auth, rec.ar):
            for rr in section:
                if rr.rtype != QTYPE.OPT:
                    rr.ttl = max(0, rr.ttl - age)
        rec.header.id = request.header.id
        rec.header.rd = request.header.rd
        return rec

    def __len__(self) -> int:
        return len(self.entries)
