"""Client messages: bytes -> a query to answer, an error reply to send, or a drop.

Rules (RFC 1035 4.1.1, RFC 6891):
- fewer than 12 bytes, or QR set (a response, possibly reflected): drop, no reply;
- a header that parses but a body that does not: FORMERR echoing id, opcode and RD;
- opcode other than QUERY: NOTIMP; QDCOUNT != 1: FORMERR;
- otherwise the parsed ``DNSRecord``.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

HEADER = struct.Struct("!HHHHHH")
MIN_UDP = 512
MAX_MSG = 65535
OUR_UDP_SIZE = 1232  # what we advertise in our own OPT records (DNS flag day 2020)


class Parsed(NamedTuple):
    request: DNSRecord | None  # a well-formed query to answer
    error: bytes | None  # an error reply to send as is
    drop: str | None  # why nothing is sent


def header_error(payload: bytes, rcode: int) -> bytes:
    """A bare reply (no sections) echoing id, opcode and RD of ``payload``'s header."""
    qid, flags = struct.unpack_from("!HH", payload)
    return HEADER.pack(qid, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)


def parse_query(payload: bytes) -> Parsed:
    if len(payload) < HEADER.size:
        return Parsed(None, None, "short")
    _qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(payload)
    if flags & 0x8000:
        return Parsed(None, None, "not_a_query")
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        return Parsed(None, header_error(payload, RCODE.NOTIMP), None)
    if qd != 1:
        return Parsed(None, header_error(payload, RCODE.FORMERR), None)
    try:
        rec = DNSRecord.parse(payload)
        if len(rec.questions) != 1:
            raise ValueError("question count")
        rec.pack()  # what we cannot re-encode we cannot answer either
    except Exception:  # dnslib raises many kinds (DNSError, struct.error, UnicodeError, ...)
        return Parsed(None, header_error(payload, RCODE.FORMERR), None)
    return Parsed(rec, None, None)


def client_opt(request: DNSRecord):
    """The client's OPT record, or None."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return rr
    return None


def dnssec_flags(request: DNSRecord) -> int:
    """What in a query changes a DNSSEC-aware answer: 1 = DO (RFC 3225, the OPT TTL's top flag
    bit: send RRSIGs), 2 = CD (RFC 4035: checking disabled). 0 for an ordinary query."""
    opt = client_opt(request)
    do = 1 if opt is not None and opt.ttl & 0x8000 else 0
    return do | (2 if request.header.cd else 0)


def udp_limit(request: DNSRecord, cap: int = MAX_MSG) -> int:
    """The largest UDP answer the client accepts: 512, or its EDNS0 payload size (capped)."""
    opt = client_opt(request)
    if opt is None:
        return MIN_UDP
    return max(MIN_UDP, min(int(opt.rclass), cap))


def reply_to(request: DNSRecord, rcode: int = RCODE.NOERROR, *, aa: bool = False) -> DNSRecord:
    """An empty reply to ``request`` with RA set, our OPT if the client sent one."""
    r = request.reply(ra=1, aa=int(aa))
    r.header.rcode = rcode
    opt = client_opt(request)
    if opt is not None:  # DO is copied back (RFC 3225 sec. 3)
        r.add_ar(EDNS0(udp_len=OUR_UDP_SIZE, flags="do" if opt.ttl & 0x8000 else ""))
    return r


def strip_opt(rec: DNSRecord) -> None:
    rec.ar = [rr for rr in rec.ar if rr.rtype != QTYPE.OPT]
    rec.set_header_qa()


def question_key(rec: DNSRecord) -> tuple:
    q = rec.q
    return (str(q.qname).rstrip(".").lower(), q.qtype, q.qclass)
