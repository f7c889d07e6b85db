"""Answer cache keyed by (name, type, class, DNSSEC flags), sans-I/O (``now`` passed in).

- The DNSSEC flags of the query (``message.dnssec_flags``: DO, CD) are part of the key: an
  answer fetched without DO (no RRSIGs) never answers a validating client that set DO, and
  an unchecked (CD) answer never answers a client relying on its upstream's validation.

- Positive answers live for the smallest TTL in the answer section (capped at ``max_ttl``).
- Negative answers (NXDOMAIN, or NOERROR with an empty answer = NODATA) live for
  min(SOA TTL, SOA MINIMUM) of the SOA in authority (RFC 2308 sec. 5), capped at ``max_neg``;
  without an SOA they are not cached, unless the caller gives a ``negative_ttl`` (answers it
  made itself, from getaddrinfo, which has no SOA to carry one).
- Never cached: TC answers, other rcodes (SERVFAIL, REFUSED...), TTL 0.
- A hit returns a copy whose TTLs are counted down by the time spent in the cache; the
  client's OPT is not stored (it is hop by hop).
- LRU: a hit or a put makes an entry youngest; beyond ``size`` entries the oldest goes.
"""
from __future__ import annotations

from collections import OrderedDict

from dnslib import QTYPE, RCODE, DNSRecord

from engine.resolver.message import question_key


def cache_ttl(rec: DNSRecord, *, max_ttl: int = 86400, max_neg: int = 3600, negative_ttl: int = 0) -> int:
    """Seconds ``rec`` may be cached; 0 when it must not be."""
    h = rec.header
    if h.tc or h.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN) or len(rec.questions) != 1:
        return 0
    if h.rcode == RCODE.NOERROR and rec.rr:
        return max(0, min(min(rr.ttl for rr in rec.rr), max_ttl))
    for rr in rec.auth:
        if rr.rtype == QTYPE.SOA:
            return max(0, min(rr.ttl, rr.rdata.times[-1], max_neg))
    return max(0, min(negative_ttl, max_neg))


class Cache:
    def __init__(self, size: int = 10000, *, max_ttl: int = 86400, max_neg: int = 3600):
        self.size = max(0, int(size))
        self.max_ttl, self.max_neg = max_ttl, max_neg
        self.entries: OrderedDict[tuple, tuple[float, float, bytes]] = OrderedDict()  # key -> (stored, expires, wire)
        self.stats = {"hits": 0, "misses": 0, "expired": 0, "evicted": 0, "stored": 0}

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, rec: DNSRecord, now: float, flags: int = 0, *, negative_ttl: int = 0) -> bool:
        """Store ``rec`` (an answer to a query with DNSSEC ``flags``) if it may be cached;
        ``negative_ttl``: how long a negative answer without an SOA may be kept (default never)."""
        ttl = cache_ttl(rec, max_ttl=self.max_ttl, max_neg=self.max_neg, negative_ttl=negative_ttl)
        if ttl <= 0 or self.size == 0:
            return False
        stored = DNSRecord(rec.header, questions=list(rec.questions), rr=list(rec.rr), auth=list(rec.auth),
                           ar=[rr for rr in rec.ar if rr.rtype != QTYPE.OPT])
        k = (*question_key(rec), flags)
        self.entries[k] = (now, now + ttl, stored.pack())
        self.entries.move_to_end(k)
        self.stats["stored"] += 1
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
            self.stats["evicted"] += 1
        return True

    def get(self, key: tuple, now: float, flags: int = 0) -> DNSRecord | None:
        """The cached answer for ``key`` = (name, qtype, qclass) asked with DNSSEC ``flags``, TTLs
        counted down; or None."""
        key = (*key, flags)
        entry = self.entries.get(key)
        if entry is None:
            self.stats["misses"] += 1
            return None
        stored, expires, wire = entry
        if now >= expires:
            del self.entries[key]
            self.stats["expired"] += 1
            self.stats["misses"] += 1
            return None
        self.entries.move_to_end(key)
        self.stats["hits"] += 1
        rec = DNSRecord.parse(wire)
        age = int(now - stored)
        for rr in (*rec.rr, *rec.auth, *rec.ar):
            rr.ttl = max(0, rr.ttl - age)
        return rec

    def clear(self, name: str | None = None) -> None:
        """Forget everything, or every entry for ``name``."""
        if name is None:
            self.entries.clear()
            return
        name = name.rstrip(".").lower()
        for k in [k for k in self.entries if k[0] == name]:
            del self.entries[k]

    def purge(self, now: float) -> int:
        """Drop expired entries; how many."""
        dead = [k for k, (_, exp, _) in self.entries.items() if exp <= now]
        for k in dead:
            del self.entries[k]
        return len(dead)
