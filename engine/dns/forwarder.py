"""Upstream forwarding as a pure state machine: choose servers (per-domain rules, longest
suffix first), rewrite ids, fail over after a per-try timeout, give up with SERVFAIL within a
total bound, and accept only answers that match (id, server, question).

``start`` / ``on_answer`` / ``on_timer`` return actions: ("send", server, wire) to transmit
to an upstream over UDP, ("tcp", server, wire, token) to retry over TCP, ("done", token,
DNSRecord) to answer the client, ("fail", token) for SERVFAIL.
"""
from __future__ import annotations

import random

from dnslib import DNSRecord


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Pending:
    __slots__ = ("token", "request", "servers", "index", "qid", "deadline", "try_deadline", "question")

    def __init__(self, token, request: DNSRecord, servers: list, qid: int, now: float, total: float, per_try: float):
        self.token, self.request, self.servers, self.index, self.qid = token, request, servers, 0, qid
        self.deadline = now + total
        self.try_deadline = now + per_try
        self.question = (str(request.q.qname).lower(), request.q.qtype, request.q.qclass)


class Forwarder:
    def __init__(self, *, upstreams: list, rules: list | None = None, timeout: float = 2.5, try_timeout: float = 0.8,
                 max_pending: int = 4096, rng: random.Random | None = None):
        self.upstreams = [parse_hostport(u) for u in upstreams]
        self.rules = sorted(((r["domain"].strip(".").lower(), [parse_hostport(u) for u in r["upstreams"]]) for r in rules or []),
                            key=lambda r: -len(r[0]))
        self.timeout, self.try_timeout, self.max_pending = timeout, try_timeout, max_pending
        self.pending: dict[int, Pending] = {}
        self.rng = rng or random.SystemRandom()
        self.counters: dict[str, int] = {}

    def _count(self, k: str) -> None:
        self.counters[k] = self.counters.get(k, 0) + 1

    def servers_for(self, name: str) -> list:
        name = name.rstrip(".").lower()
        for domain, servers in self.rules:
            if name == domain or name.endswith("." + domain):
                return servers
        return self.upstreams

    def _new_id(self) -> int:
        for _ in range(100):
            qid = self.rng.randrange(1, 65536)
            if qid not in self.pending:
                return qid
        raise RuntimeError("no free query id")

    def start(self, token, request: DNSRecord, now: float) -> list:
        servers = self.servers_for(str(request.q.qname))
        if not servers:
            self._count("no_upstream")
            return [("fail", token)]
        if len(self.pending) >= self.max_pending:
            self._count("too_many_pending")
            return [("fail", token)]
        qid = self._new_id()
        p = Pending(token, request, list(servers), qid, now, self.timeout, self.try_timeout)
        self.pending[qid] = p
        return [("send", servers[0], self._wire(p))]

    def _wire(self, p: Pending) -> bytes:
        q = DNSRecord.parse(p.request.pack())
        q.header.id = p.qid
        return q.pack()

    def on_answer(self, data: bytes, server: tuple, now: float, via_tcp: bool = False) -> list:
        try:
            rec = DNSRecord.parse(data)
        except Exception:
            self._count("bad_answer")
            return []
        p = self.pending.get(rec.header.id)
        if p is None or server not in p.servers or not rec.questions:
            self._count("unmatched_answer")
            return []
        q = rec.q
        if (str(q.qname).lower(), q.qtype, q.qclass) != p.question:
            self._count("unmatched_answer")
            return []
        if rec.header.tc and not via_tcp:
            self._count("tc_retry_tcp")
            p.try_deadline = now + max(self.try_timeout, 2.0)
            return [("tcp", server, self._wire(p), p.qid)]
        del self.pending[p.qid]
        rec.header.id = p.request.header.id
        return [("done", p.token, rec)]

    def tcp_failed(self, qid: int, now: float) -> list:
        p = self.pending.get(qid)
        if p is None:
            return []
        p.try_deadline = now  # fail over at once
        return self.on_timer(now)

    def next_deadline(self) -> float | None:
        if not self.pending:
            return None
        return min(min(p.try_deadline, p.deadline) for p in self.pending.values())

    def on_timer(self, now: float) -> list:
        out = []
        for qid, p in list(self.pending.items()):
            if now >= p.deadline:
                del self.pending[qid]
                self._count("timeout")
                out.append(("fail", p.token))
            elif now >= p.try_deadline:
                p.index += 1
                p.try_deadline = now + self.try_timeout
                self._count("failover")
                out.append(("send", p.servers[p.index % len(p.servers)], self._wire(p)))
        return out
