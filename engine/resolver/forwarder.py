"""Forwarding queries to upstream servers, as a state machine without I/O.

Theory of operation
- ``start(token, query, now)`` picks the servers for the question (the rule with the longest
  matching domain suffix, else the default upstreams), healthy ones first, gives the query a
  fresh random id unused by any pending query, and returns ``Send(server, wire)``.
- ``on_answer(data, server, now)`` accepts an answer only if its id is pending, it came from a
  server this query was sent to, and it carries the same question; anything else is ignored
  (and counted). Accepted, it yields ``Done(token, wire, record)`` with the client's id put
  back. An answer with TC set yields ``SendTcp(server, wire, qid)``: the caller repeats the
  query over TCP to that server and feeds the answer back with ``tcp=True`` (or calls
  ``on_tcp_failed``). SERVFAIL/REFUSED from one server moves on to the next untried one,
  keeping that answer in case nothing better arrives.
- ``on_timer(now)`` (the caller arms one timer at ``next_deadline()``): a try that got no
  answer within ``try_timeout`` moves to the next server (cycling, so a single server is
  retried) and marks the silent one down for ``hold_down`` seconds (down servers are tried
  last); a query still unanswered at ``timeout`` after its start yields ``Fail(token, why)``
  (the caller answers SERVFAIL), so the client always hears back within the bound.
- ``on_refused(qid, server, now)``: the caller's socket connected to ``server`` for query
  ``qid`` got ICMP port unreachable (ECONNREFUSED). Nothing listens there, so the query moves
  on at once instead of at ``try_timeout``; once every server of the query has refused, it
  fails at once (``Fail(token, "refused")``) rather than at ``timeout``.

Servers are (host, port) tuples; ``parse_hostport`` reads "IP:port", "[v6]:port" or "IP".
"""
from __future__ import annotations

import ipaddress
import random
from typing import NamedTuple

from dnslib import RCODE, DNSRecord

from engine.resolver.message import question_key


class Send(NamedTuple):
    server: tuple
    wire: bytes


class SendTcp(NamedTuple):
    server: tuple
    wire: bytes
    qid: int


class Done(NamedTuple):
    token: object
    wire: bytes  # the answer with the client's id
    record: DNSRecord


class Fail(NamedTuple):
    token: object
    reason: str


def parse_hostport(text, default_port: int = 53) -> tuple[str, int]:
    """("127.0.0.77", 53) from "127.0.0.77:53", "127.0.0.77", "[::1]:53" or "::1"; ValueError if bad."""
    if isinstance(text, (tuple, list)):
        host, port = text
    else:
        text = str(text).strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else default_port
        elif text.count(":") == 1:
            host, port = text.split(":")
        else:
            host, port = text, default_port
    try:
        host = str(ipaddress.ip_address(str(host).split("%")[0]))
        port = int(port)
    except ValueError:
        raise ValueError(f"bad upstream {text!r}: want IP or IP:port") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad upstream {text!r}: port out of range")
    return host, port


class Pending:
    __slots__ = ("token", "client_id", "body", "question", "servers", "index", "sent", "deadline", "try_deadline",
                 "tcp", "fallback", "refused")

    def __init__(self, token, client_id: int, body: bytes, question: tuple, servers: list, now: float, total: float):
        self.token, self.client_id, self.body, self.question, self.servers = token, client_id, body, question, servers
        self.index = 0
        self.sent: set = set()
        self.deadline = now + total
        self.try_deadline = now
        self.tcp = None  # the server a TCP retry is in flight to
        self.fallback: Done | None = None
        self.refused: set = set()  # servers that answered with ICMP port unreachable

    def wire(self, qid: int) -> bytes:
        return qid.to_bytes(2, "big") + self.body


class Forwarder:
    def __init__(self, *, upstreams=(), rules=(), timeout: float = 2.5, try_timeout: float = 0.8,
                 max_pending: int = 4096, hold_down: float = 30.0, rng: random.Random | None = None):
        self.upstreams = [parse_hostport(u) for u in upstreams]
        self.rules = []
        for r in rules or ():
            domain = str(r["domain"]).strip().rstrip(".").lower()
            self.rules.append((domain, [parse_hostport(u) for u in r["upstreams"]]))
        self.rules.sort(key=lambda r: -len(r[0]))
        self.timeout, self.try_timeout = float(timeout), float(try_timeout)
        self.max_pending, self.hold_down = max_pending, hold_down
        self.pending: dict[int, Pending] = {}  # upstream qid -> query
        self.down: dict[tuple, float] = {}  # server -> down until
        self.rng = rng or random.SystemRandom()
        self.counters: dict[str, int] = {}

    def _count(self, k: str) -> None:
        self.counters[k] = self.counters.get(k, 0) + 1

    def servers_for(self, name: str, now: float | None = None) -> list:
        """The servers for ``name``: a rule's (longest suffix wins) or the default; healthy first."""
        name = str(name).rstrip(".").lower()
        servers = self.upstreams
        for domain, rule_servers in self.rules:
            if name == domain or name.endswith("." + domain) or domain == "":
                servers = rule_servers
                break
        if now is None:
            return list(servers)
        return sorted(servers, key=lambda s: self.down.get(s, 0.0) > now)

    # -- events --------------------------------------------------------------------------------
    def start(self, token, query: bytes, now: float, *, request: DNSRecord | None = None) -> list:
        """Begin forwarding ``query`` (a client's wire message, sent on unchanged but for its id)."""
        request = request or DNSRecord.parse(query)
        servers = self.servers_for(str(request.q.qname), now)
        if not servers:
            self._count("no_upstream")
            return [Fail(token, "no_upstream")]
        if len(self.pending) >= self.max_pending:
            self._count("busy")
            return [Fail(token, "busy")]
        qid = self.rng.randrange(65536)
        while qid in self.pending:
            qid = self.rng.randrange(65536)
        p = Pending(token, int.from_bytes(query[:2], "big"), bytes(query[2:]), question_key(request), servers, now,
                    self.timeout)
        self.pending[qid] = p
        return [self._send(p, qid, now)]

    def _send(self, p: Pending, qid: int, now: float) -> Send:
        server = p.servers[p.index % len(p.servers)]
        p.sent.add(server)
        p.try_deadline = min(now + self.try_timeout, p.deadline)
        self._count("sent")
        return Send(server, p.wire(qid))

    def _next(self, p: Pending, qid: int, now: float) -> list:
        if now >= p.deadline:
            return self._finish_failed(qid, "timeout")
        for _ in range(len(p.servers)):  # the next server that has not refused this query
            p.index += 1
            if p.servers[p.index % len(p.servers)] not in p.refused:
                break
        return [self._send(p, qid, now)]

    def _finish_failed(self, qid: int, reason: str) -> list:
        p = self.pending.pop(qid)
        if p.fallback is not None:
            return [p.fallback]
        self._count("fail_" + reason)
        return [Fail(p.token, reason)]

    def on_answer(self, data: bytes, server: tuple, now: float, *, tcp: bool = False) -> list:
        """An upstream's message; actions (none if it is ignored)."""
        if len(data) < 12:
            self._count("ignored_short")
            return []
        qid = int.from_bytes(data[:2], "big")
        p = self.pending.get(qid)
        if p is None:
            self._count("ignored_unknown_id")
            return []
        if server not in p.sent or (tcp and p.tcp != server):
            self._count("ignored_wrong_server")
            return []
        try:
            rec = DNSRecord.parse(data)
        except Exception:
            self._count("ignored_unparsable")
            return []
        if rec.header.tc and not tcp and not rec.questions and rec.header.qr:
            pass  # some servers send a bare header with TC (RFC 1035 allows it): id and server matched
        elif not rec.header.qr or len(rec.questions) != 1 or question_key(rec) != p.question:
            self._count("ignored_wrong_question")
            return []
        self.down.pop(server, None)
        if rec.header.tc and not tcp:
            if p.tcp is None:
                p.tcp = server
                self._count("tcp_retry")
                return [SendTcp(server, p.wire(qid), qid)]
            return []  # a TCP retry is already in flight
        if tcp:
            p.tcp = None
        rec.header.id = p.client_id
        done = Done(p.token, p.client_id.to_bytes(2, "big") + bytes(data[2:]), rec)
        if rec.header.rcode in (RCODE.SERVFAIL, RCODE.REFUSED) and len(p.sent) < len(p.servers) and now < p.deadline:
            self._count("next_after_" + RCODE.get(rec.header.rcode).lower())
            p.fallback = done
            return self._next(p, qid, now)
        del self.pending[qid]
        self._count("answered")
        return [done]

    def on_tcp_failed(self, qid: int, server: tuple, now: float) -> list:
        p = self.pending.get(qid)
        if p is None or p.tcp != server:
            return []
        p.tcp = None
        self._count("tcp_failed")
        self.down[server] = now + self.hold_down
        return self._next(p, qid, now)

    def on_refused(self, qid: int, server: tuple, now: float) -> list:
        """ICMP port unreachable on the query's socket to ``server``: fail over now."""
        p = self.pending.get(qid)
        if p is None or p.tcp is not None or server in p.refused or server not in p.sent:
            return []
        self._count("port_unreachable")
        p.refused.add(server)
        self.down[server] = now + self.hold_down
        if p.refused >= set(p.servers):
            return self._finish_failed(qid, "refused")
        if p.servers[p.index % len(p.servers)] != server:
            return []  # already moved on from it (a late error): the current try stands
        return self._next(p, qid, now)

    def on_timer(self, now: float) -> list:
        out: list = []
        for qid, p in list(self.pending.items()):
            if now >= p.deadline:
                out += self._finish_failed(qid, "timeout")
            elif p.tcp is None and now >= p.try_deadline:
                self._count("try_timeout")
                self.down[p.servers[p.index % len(p.servers)]] = now + self.hold_down
                out += self._next(p, qid, now)
        return out

    def next_deadline(self) -> float | None:
        best = None
        for p in self.pending.values():
            t = p.deadline if p.tcp is not None else min(p.deadline, p.try_deadline)
            if best is None or t < best:
                best = t
        return best

    def cancel(self, token) -> None:
        for qid in [q for q, p in self.pending.items() if p.token == token]:
            del self.pending[qid]
