"""Fitting answers into the client's UDP limit (RFC 1035 4.2.1, RFC 6891 7, RFC 2181 9).

An answer longer than the limit is replaced by its header with TC set, the question, and the
OPT record if there was one: no partial RRsets, so the client retries over TCP and gets it
whole there. (Answers are small in practice; trimming to whole RRsets buys little.)
"""
from __future__ import annotations

from dnslib import QTYPE, DNSHeader, DNSRecord


def truncated(rec: DNSRecord) -> DNSRecord:
    """``rec``'s header with TC set, its question and OPT; no answer/authority/additional."""
    h = rec.header
    hdr = DNSHeader(id=h.id, bitmap=h.bitmap, tc=1)
    hdr.rcode = h.rcode
    return DNSRecord(hdr, questions=list(rec.questions), ar=[rr for rr in rec.ar if rr.rtype == QTYPE.OPT])


def fit(rec: DNSRecord, wire: bytes | None, limit: int) -> tuple[bytes, bool]:
    """(bytes to send, whether they were truncated). ``wire`` is ``rec`` packed, if known."""
    if wire is None:
        wire = rec.pack()
    if len(wire) <= limit:
        return wire, False
    out = truncated(rec).pack()
    if len(out) > limit:  # a huge question or OPT: the bare header
        hdr = DNSHeader(id=rec.header.id, bitmap=rec.header.bitmap, tc=1)
        hdr.rcode = rec.header.rcode
        out = DNSRecord(hdr).pack()
    return out, True
