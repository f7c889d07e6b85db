"""A real upstream DNS server for tests (dnslib), on a loopback address the test picks.

Answers a small zone under ``example.test`` with many record types, a large TXT record, and
counts the queries it saw, so tests can tell forwarding and caching apart. Never forwards.
"""
from __future__ import annotations

import threading

from dnslib import AAAA, CAA, MX, QTYPE, RCODE, RR, SRV, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

QUIET = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)


class ZoneResolver(BaseResolver):
    def __init__(self, tag: str, ttl: int = 300):
        self.tag = tag
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler):
        q = request.q
        name, qtype = str(q.qname).rstrip(".").lower(), QTYPE[q.qtype]
        with self.lock:
            self.queries.append((name, qtype))
        reply = request.reply()
        ttl = self.ttl
        if name in ("www.example.test", f"{self.tag}.corp.example", "www.corp.example"):
            if qtype == "A":
                reply.add_answer(RR(q.qname, QTYPE.A, rdata=A("10.99.0.7" if "corp" in name else "10.99.0.1"), ttl=ttl))
            elif qtype == "AAAA":
                reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA("fd00::1"), ttl=ttl))
            elif qtype == "TXT":
                reply.add_answer(RR(q.qname, QTYPE.TXT, rdata=TXT(f"served-by={self.tag}"), ttl=ttl))
            elif qtype == "MX":
                reply.add_answer(RR(q.qname, QTYPE.MX, rdata=MX("mail.example.test", 10), ttl=ttl))
            elif qtype == "SRV":
                reply.add_answer(RR(q.qname, QTYPE.SRV, rdata=SRV(0, 5, 5060, "sip.example.test"), ttl=ttl))
            elif qtype == "CAA":
                reply.add_answer(RR(q.qname, QTYPE.CAA, rdata=CAA(0, "issue", "ca.example.test"), ttl=ttl))
        elif name == "big.example.test" and qtype == "TXT":
            for i in range(12):
                reply.add_answer(RR(q.qname, QTYPE.TXT, rdata=TXT([f"{i:02d}" + "x" * 250]), ttl=ttl))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

    def count(self, name: str) -> int:
        with self.lock:
            return sum(1 for n, _ in self.queries if n == name)


class Upstream:
    """UDP and TCP dnslib servers on (address, port) with one ZoneResolver."""

    def __init__(self, address: str, tag: str = "up1", ttl: int = 300):
        self.resolver = ZoneResolver(tag, ttl)
        self.udp = DNSServer(self.resolver, address=address, port=0, logger=QUIET)
        port = self.udp.server.server_address[1]
        self.tcp = DNSServer(self.resolver, address=address, port=port, tcp=True, logger=QUIET)
        self.address, self.port = address, port
        self.udp.start_thread()
        self.tcp.start_thread()

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"

    def stop(self) -> None:
        self.udp.stop()
        self.tcp.stop()
        self.udp.server.server_close()
        self.tcp.server.server_close()
