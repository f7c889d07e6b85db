"""DnsServer: the I/O side of gangway's DNS (the logic is in engine/resolver).

Order of answering a query: the local zone (authoritative: host, gateway, aliases, guests,
static and runtime records, PTR), then the cache, then forwarding:
- ``mode = "upstream"``: the query is sent on as is (new id; EDNS0 and all) over UDP to the
  configured ``upstreams`` or, when that list is empty, the nameservers of ``resolv_conf``
  (re-read when it changes, checked at most once a second); ``rule`` entries send a domain
  to other servers. An answer with TC is fetched again over TCP (in a worker thread).
  Each forwarded query goes out on its own connected UDP socket (a random source port, RFC
  5452 sec. 9.2; the kernel drops datagrams from any other address), closed when the query
  ends; beyond ``MAX_QUERY_SOCKETS`` open at once, one shared socket per family is used.
- ``mode = "host"``: A/AAAA via the system resolver (getaddrinfo in a small thread pool; a
  CNAME when the canonical name differs); other types are forwarded as in upstream mode if
  upstream servers are known (configured or from resolv.conf), else answered NOTIMP. Names
  under a ``rule`` domain are forwarded to the rule's servers whatever the type.
A question already being resolved (same name, type, DNSSEC flags) is not sent again: the
new client waits for the same answer (up to ``MAX_FOLLOWERS`` per question), so a burst of
identical queries, or a guest's retries, costs the upstream one query.
Worker threads never touch server state: they put a closure on a queue and write a byte to a
pipe the loop watches; the closure runs on the loop thread.

Answers larger than the client's UDP limit (512, or its EDNS0 size capped at ``udp_max``) get
TC; over TCP (``transport="tcp"``, host-side TCP/unix listeners) they go whole.
Nothing raises out of ``query``: malformed queries get FORMERR when a header parses (else are
dropped and counted), internal errors SERVFAIL.

Config (the ``[dns]`` table): mode, upstreams, resolv_conf, rule, domain, aliases, records,
and optionally cache_size (10000), timeout (2.5 s), try_timeout (0.8 s), local_ttl (60),
host_ttl (30: TTL of answers from the system resolver), udp_max (1232), threads (4),
tcp_idle (30 s).
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import random
import socket
import threading
from pathlib import Path
from typing import Callable

from dnslib import AAAA, CNAME, EDNS0, QTYPE, RCODE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from engine.resolver import message
from engine.resolver.cache import Cache
from engine.resolver.forwarder import Done, Fail, Forwarder, Send, SendTcp, parse_hostport
from engine.resolver.truncate import fit
from engine.resolver.zone import LocalZone, check_hostname, norm
from gangway.statefile import read_json, write_json

RECORDS_FILE = "dns-records.json"
MAX_TCP_CLIENTS = 256
MAX_TCP_OUT = 1 << 20
MAX_HOST_PENDING = 256
MAX_QUERY_SOCKETS = 256  # per-query upstream sockets open at once; beyond it the shared one
MAX_FOLLOWERS = 256  # clients waiting on one in-flight question besides the one that asked first
REFUSED_TYPES = {QTYPE.AXFR, QTYPE.IXFR, 253, 254}  # zone transfers, MAILB, MAILA
BASE_COUNTERS = ("queries", "local", "forwarded", "cache_hits", "nxdomain", "servfail", "formerr", "notimp",
                 "refused", "truncated", "drops")


def resolv_conf_servers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, as "IP:53" (bad lines skipped)."""
    out = []
    for line in text.splitlines():
        parts = line.split("#")[0].split(";")[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                host, port = parse_hostport(parts[1].split("%")[0] if ":" in parts[1] else parts[1])
            except ValueError:
                continue
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


class Waiter:
    """A client waiting for a forwarded answer. ``chain``: local CNAMEs to put in front."""

    __slots__ = ("reply", "limit", "request", "chain", "flags")

    def __init__(self, reply, limit: int, request: DNSRecord, chain=None):
        self.reply, self.limit, self.request, self.chain = reply, limit, request, chain
        self.flags = 0  # DNSSEC flags (DO, CD) of the question being resolved: part of the cache key


class DnsServer:
    def __init__(self, loop, config: dict, *, gateway: str, host_alias: str, subnet: str, state_dir: Path, log,
                 resolve: Callable | None = None):
        self.loop, self.cfg, self.log = loop, dict(config or {}), log
        cfg = self.cfg
        self.state_dir = Path(state_dir)
        self.mode = cfg.get("mode", "upstream")
        if self.mode not in ("host", "upstream"):
            raise ValueError(f"dns.mode must be 'host' or 'upstream', not {self.mode!r}")
        self._counters: dict[str, int] = dict.fromkeys(BASE_COUNTERS, 0)
        self._warned: set[str] = set()
        self.udp_max = max(512, int(cfg.get("udp_max", 1232)))
        self.host_ttl = int(cfg.get("host_ttl", 30))
        self.timeout = float(cfg.get("timeout", 2.5))
        self.tcp_idle = float(cfg.get("tcp_idle", 30.0))
        self.zone = LocalZone(domain=cfg.get("domain", "gangway.internal"), gateway=gateway, host_alias=host_alias,
                              subnet=subnet, aliases=cfg.get("aliases", ()), ttl=int(cfg.get("local_ttl", 60)))
        for i, r in enumerate(cfg.get("records", ()) or ()):
            try:
                self.zone.add(r["name"], r["type"], str(r["value"]), r.get("ttl"), source="static")
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"dns.records[{i}] {r!r}: {e}") from None
        self._load_runtime()
        self.cache = Cache(int(cfg.get("cache_size", 10000)))
        self.fwd = Forwarder(upstreams=cfg.get("upstreams", ()) or (), rules=cfg.get("rule", ()) or (),
                             timeout=self.timeout, try_timeout=float(cfg.get("try_timeout", 0.8)))
        self.resolv_path = cfg.get("resolv_conf", "/etc/resolv.conf")
        self.resolv_check_interval = 1.0
        self._resolv_sig = None
        self._resolv_checked = -1e9
        self._refresh_upstreams(force=True)
        self.resolve = resolve or socket.getaddrinfo
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=int(cfg.get("threads", 4)),
                                                          thread_name_prefix="dns")
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # closures from worker threads
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_lock = threading.Lock()
        loop.add_reader(self._wake_r, self._on_wake)
        self._up: dict[int, socket.socket] = {}  # family -> shared upstream UDP socket
        self._qsocks: dict[object, list] = {}  # token -> its own connected upstream UDP sockets
        self._nqsocks = 0
        self.waiting: dict[int, Waiter] = {}  # token -> the client whose question went out
        self.followers: dict[int, list[Waiter]] = {}  # token -> later clients asking the same
        self.inflight: dict[tuple, int] = {}  # (name, qtype, flags, by_host) -> token
        self._key_of: dict[int, tuple] = {}  # token -> its inflight key
        self.host_pending: dict[int, object] = {}  # token -> timeout Timer
        self._tokens = 0
        self._timer = None
        self._timer_at = None
        self.listeners: list = []
        self.tcp_clients: dict = {}
        self.closed = False

    # -- counters and state ----------------------------------------------------------------------
    @property
    def counters(self) -> dict:
        out = dict(self._counters)
        out.update({f"upstream.{k}": v for k, v in self.fwd.counters.items()})
        out.update({f"cache.{k}": v for k, v in self.cache.stats.items()})
        out["cache.entries"] = len(self.cache)
        out["pending"] = len(self.waiting) + sum(len(f) for f in self.followers.values())
        out["upstream_sockets"] = self._nqsocks
        return out

    def _count(self, k: str, n: int = 1) -> None:
        self._counters[k] = self._counters.get(k, 0) + n

    def _drop(self, reason: str) -> None:
        self._count("drops")
        self._count("drop." + reason)

    def _warn_once(self, kind: str, **kw) -> None:
        self._count(kind)
        if kind not in self._warned:
            self._warned.add(kind)
            self.log.warning(kind, first=True, **kw)

    def _load_runtime(self) -> None:
        try:
            data = read_json(self.state_dir / RECORDS_FILE, {"records": []})
        except (OSError, ValueError) as e:
            self.log.error("dns_records_unreadable", path=str(self.state_dir / RECORDS_FILE), error=str(e))
            return
        records = data.get("records", []) if isinstance(data, dict) else []
        for r in records:
            try:
                self.zone.add(r["name"], r["type"], str(r["value"]), r.get("ttl"), source="runtime")
            except (KeyError, TypeError, ValueError) as e:
                self.log.warning("dns_record_skipped", record=r, error=str(e))

    def _save_runtime(self) -> None:
        recs = [{k: r[k] for k in ("name", "type", "value", "ttl")} for r in self.zone.records_of("runtime")]
        write_json(self.state_dir / RECORDS_FILE, {"version": 1, "records": recs})

    # -- the public API ----------------------------------------------------------------------------
    def set_guest(self, hostname: str, ip: str) -> None:
        """``hostname.DOMAIN`` -> ``ip`` (and its PTR), replacing that name's previous address."""
        try:
            label = check_hostname(hostname)
            name = f"{label}.{self.zone.domain}"
            if name in self.zone.reserved:
                raise ValueError(f"{name} is a built-in name")
            self.zone.remove(name, "A", source="guest")
            self.zone.add(name, "A", ip, None, source="guest")
        except ValueError as e:
            self.log.warning("guest_name_rejected", hostname=hostname, ip=ip, error=str(e))
            return
        self.log.info("guest_name", name=name, ip=ip)

    def remove_guest(self, hostname: str) -> None:
        try:
            label = check_hostname(hostname)
        except ValueError:
            return
        if self.zone.remove(f"{label}.{self.zone.domain}", source="guest"):
            self.log.info("guest_name_removed", name=f"{label}.{self.zone.domain}")

    def add_record(self, name: str, rtype: str, value: str, ttl: int = 60) -> None:
        """Add a runtime record (persisted); ValueError with a clear message on bad input."""
        if not isinstance(name, str) or not isinstance(rtype, str) or not isinstance(value, str):
            raise ValueError("name, type and value must be strings")
        rec = self.zone.add(name, rtype, value, ttl, source="runtime")
        self._save_runtime()
        self.log.info("record_added", name=rec.name, type=rec.rtype, value=rec.value, ttl=rec.ttl)

    def remove_record(self, name: str, rtype: str | None = None, value: str | None = None) -> int:
        """Remove matching runtime records; how many were removed."""
        n = self.zone.remove(norm(name), rtype, value, source="runtime")
        if n:
            self._save_runtime()
            self.log.info("record_removed", name=norm(name), type=rtype, count=n)
        return n

    def list_records(self) -> list[dict]:
        """Every local record: [{"name", "type", "value", "ttl", "source"}], built-ins first."""
        return self.zone.all_records()

    def query(self, payload: bytes, reply: Callable[[bytes], None], *, transport: str = "udp") -> None:
        """Answer ``payload`` through ``reply`` (now or later). Never raises."""
        self._count("queries")
        try:
            parsed = message.parse_query(bytes(payload))
        except Exception as e:  # parse_query is total; this is a guard
            self._warn_once("internal_error", error=repr(e))
            self._drop("internal_error")
            return
        if parsed.drop:
            self._drop(parsed.drop)
            return
        if parsed.error is not None:
            self._count("formerr" if parsed.error[3] & 0xF == RCODE.FORMERR else "notimp")
            self._deliver(reply, parsed.error)
            return
        request = parsed.request
        limit = message.MAX_MSG if transport == "tcp" else message.udp_limit(request, self.udp_max)
        w = Waiter(reply, limit, request)
        try:
            self._answer(w, bytes(payload))
        except Exception as e:  # never let one query hurt the service
            self._warn_once("internal_error", error=repr(e))
            self._error(w, RCODE.SERVFAIL)

    # -- answering ---------------------------------------------------------------------------------
    def _deliver(self, reply, data: bytes) -> None:
        try:
            reply(data)
        except Exception as e:
            self._warn_once("reply_failed", error=repr(e))

    def _send(self, w: Waiter, rec: DNSRecord, wire: bytes | None = None) -> None:
        rc = rec.header.rcode
        if rc == RCODE.NXDOMAIN:
            self._count("nxdomain")
        elif rc == RCODE.SERVFAIL:
            self._count("servfail")
        elif rc == RCODE.NOTIMP:
            self._count("notimp")
        elif rc == RCODE.REFUSED:
            self._count("refused")
        data, tc = fit(rec, wire, w.limit)
        if tc:
            self._count("truncated")
        self._deliver(w.reply, data)

    def _error(self, w: Waiter, rcode: int) -> None:
        self._send(w, message.reply_to(w.request, rcode))

    def _answer(self, w: Waiter, payload: bytes) -> None:
        q = w.request.q
        if q.qclass not in (1, 255):  # IN, ANY
            self._error(w, RCODE.REFUSED)
            return
        if q.qtype in REFUSED_TYPES:
            self._error(w, RCODE.NOTIMP)
            return
        local = self.zone.answer(str(q.qname), q.qtype)
        if local is not None:
            self._count("local")
            if local.chase:
                w.chain = local.answers
                self._resolve(w, local.chase, q.qtype, None)
                return
            r = message.reply_to(w.request, local.rcode, aa=True)
            r.rr, r.auth = list(local.answers), list(local.authority)
            r.set_header_qa()
            self._send(w, r)
            return
        self._resolve(w, str(q.qname), q.qtype, payload)

    def _resolve(self, w: Waiter, name: str, qtype: int, payload: bytes | None) -> None:
        """Cache, then forward (name, qtype); ``payload`` is the client's own query, if it asked this."""
        by_host = self.mode == "host" and qtype in (QTYPE.A, QTYPE.AAAA) and not self._ruled(name)
        # the client's DO/CD shape an upstream's answer (RRSIGs, validation); getaddrinfo has neither
        w.flags = message.dnssec_flags(w.request) if payload is not None and not by_host else 0
        cached = self.cache.get((norm(name), qtype, 1), self.loop.now(), w.flags)
        if cached is not None:
            self._count("cache_hits")
            self._complete(w, cached, None, from_cache=True)
            return
        key = (norm(name), qtype, w.flags, by_host)
        lead = self.inflight.get(key)
        if lead is not None and len(self.followers.get(lead, ())) < MAX_FOLLOWERS:
            self.followers.setdefault(lead, []).append(w)
            self._count("coalesced")
            return
        if payload is None:  # chasing a local CNAME: a query of our own
            sub = DNSRecord(DNSHeader(id=random.randrange(65536), rd=1), q=DNSQuestion(name, qtype))
            payload = sub.pack()
        self._tokens += 1
        token = self._tokens
        self.waiting[token] = w
        if lead is None:
            self.inflight[key] = token
            self._key_of[token] = key
        self._count("forwarded")
        if by_host:
            self._host_start(token, norm(name), qtype)
            return
        self._refresh_upstreams()
        if self.mode == "host" and not self.fwd.servers_for(name):
            self._take(token)
            self._error(w, RCODE.NOTIMP)  # host mode knows no server for raw forwarding
            return
        self._run(self.fwd.start(token, payload, self.loop.now()))

    def _take(self, token) -> tuple[Waiter | None, list]:
        """The client that asked ``token``'s question and those who joined it; forgets them."""
        key = self._key_of.pop(token, None)
        if key is not None and self.inflight.get(key) == token:
            del self.inflight[key]
        return self.waiting.pop(token, None), self.followers.pop(token, [])

    def _answer_followers(self, followers: list, wire: bytes) -> None:
        for f in followers:  # each from its own copy, shaped for its own request (id, OPT, limit)
            self._complete(f, DNSRecord.parse(wire), None, from_cache=True)

    def _fail_all(self, w: Waiter | None, followers: list, reason: str) -> None:
        for x in ([w] if w is not None else []) + followers:
            self._count("fail." + reason)
            self._error(x, RCODE.SERVFAIL)

    def _complete(self, w: Waiter, rec: DNSRecord, wire: bytes | None, *, from_cache: bool = False) -> None:
        """Answer ``w`` with ``rec`` (the answer to the question resolved for it)."""
        if w.chain is None and not from_cache:
            rec.header.id = w.request.header.id
            self._send(w, rec, wire)
            return
        r = message.reply_to(w.request, rec.header.rcode)
        r.rr = list(w.chain or ()) + list(rec.rr)
        r.auth = list(rec.auth)
        r.ar = [rr for rr in rec.ar if rr.rtype != QTYPE.OPT] + [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
        r.set_header_qa()
        r.header.aa = 0
        r.header.ad = rec.header.ad if w.chain is None else 0
        self._send(w, r)

    # -- forwarding (upstream mode) ----------------------------------------------------------------
    def _refresh_upstreams(self, force: bool = False) -> None:
        if self.cfg.get("upstreams"):
            return
        now = self.loop.now()
        if not force and now - self._resolv_checked < self.resolv_check_interval:
            return
        self._resolv_checked = now
        try:
            st = os.stat(self.resolv_path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        if sig == self._resolv_sig and not force:
            return
        self._resolv_sig = sig
        servers: list[str] = []
        if sig is not None:
            try:
                with open(self.resolv_path) as f:
                    servers = resolv_conf_servers(f.read())
            except (OSError, UnicodeError) as e:
                self.log.warning("resolv_conf_unreadable", path=str(self.resolv_path), error=str(e))
        new = [parse_hostport(s) for s in servers]
        if new != self.fwd.upstreams:
            self.fwd.upstreams = new
            self.log.info("upstreams", source=str(self.resolv_path), servers=servers)

    def _ruled(self, name: str) -> bool:
        """Whether a ``rule`` domain covers ``name`` (then it goes to the rule's servers)."""
        name = norm(name)
        return any(d == "" or name == d or name.endswith("." + d) for d, _ in self.fwd.rules)

    def _query_sock(self, token, qid: int, server) -> socket.socket | None:
        """A new UDP socket connected to ``server`` for query ``token`` (upstream id ``qid``), or
        None (cap, error)."""
        if self._nqsocks >= MAX_QUERY_SOCKETS:
            self._count("upstream_shared_socket")
            return None
        s = socket.socket(socket.AF_INET6 if ":" in server[0] else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.connect(server)
        except OSError:
            s.close()
            return None
        self._qsocks.setdefault(token, []).append(s)
        self._nqsocks += 1
        self.loop.add_reader(s, lambda: self._on_upstream(s, qid, server))
        return s

    def _release(self, token) -> None:
        for s in self._qsocks.pop(token, ()):
            self._nqsocks -= 1
            self.loop.remove_reader(s)
            s.close()

    def _sock_for(self, server) -> socket.socket:
        fam = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        s = self._up.get(fam)
        if s is None:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.setblocking(False)
            self._up[fam] = s
            self.loop.add_reader(s, lambda: self._on_upstream(s))
        return s

    def _on_upstream(self, sock, qid=None, server=None) -> None:
        """Answers on an upstream socket. On a query's own connected socket (qid, server),
        ECONNREFUSED is that server's ICMP port unreachable: the forwarder fails over at once.
        On the shared unconnected fallback socket the error names no server: the try timer
        fails over."""
        actions: list = []
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                if qid is not None:
                    actions += self.fwd.on_refused(qid, server, self.loop.now())
                continue
            except OSError:
                continue
            actions += self.fwd.on_answer(data, (addr[0], addr[1]), self.loop.now())
        self._run(actions)

    def _tcp_worker(self, server, wire: bytes, qid: int, timeout: float) -> None:
        """In a worker thread: one query over TCP; the outcome goes back to the loop thread."""
        try:
            with socket.create_connection(server, timeout=max(0.05, timeout)) as s:
                s.sendall(len(wire).to_bytes(2, "big") + wire)
                buf = b""
                while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed before a whole answer")
                    buf += chunk
            data = buf[2 : 2 + int.from_bytes(buf[:2], "big")]
            self._post(lambda: self._run(self.fwd.on_answer(data, server, self.loop.now(), tcp=True)))
        except OSError:
            self._post(lambda: self._run(self.fwd.on_tcp_failed(qid, server, self.loop.now())))

    def _run(self, actions: list) -> None:
        for act in actions:
            try:
                self._act(act)
            except Exception as e:
                self._warn_once("internal_error", error=repr(e))
        self._arm()

    def _act(self, act) -> None:
        if isinstance(act, Send):
            qid = int.from_bytes(act.wire[:2], "big")
            p = self.fwd.pending.get(qid)
            s = self._query_sock(p.token, qid, act.server) if p is not None else None
            try:
                if s is not None:
                    s.send(act.wire)
                else:
                    self._sock_for(act.server).sendto(act.wire, act.server)
            except OSError as e:
                self._warn_once("upstream_send_error", server=act.server, error=str(e))
        elif isinstance(act, SendTcp):
            p = self.fwd.pending.get(act.qid)
            remaining = (p.deadline - self.loop.now()) if p else self.timeout
            self.pool.submit(self._tcp_worker, act.server, act.wire, act.qid, remaining)
        elif isinstance(act, Done):
            self._release(act.token)
            w, followers = self._take(act.token)
            if w is not None:
                self.cache.put(act.record, self.loop.now(), w.flags)
                self._answer_followers(followers, act.wire)
                self._complete(w, act.record, act.wire)
        elif isinstance(act, Fail):
            self._release(act.token)
            w, followers = self._take(act.token)
            self._fail_all(w, followers, act.reason)

    def _arm(self) -> None:
        deadline = self.fwd.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        if deadline is not None and not self.closed:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._run(self.fwd.on_timer(self.loop.now()))

    # -- host mode: getaddrinfo in worker threads -------------------------------------------------
    def _host_start(self, token: int, name: str, qtype: int) -> None:
        if len(self.host_pending) >= MAX_HOST_PENDING:
            w, followers = self._take(token)
            self._fail_all(w, followers, "busy")
            return
        self._count("host_lookups")
        self.host_pending[token] = self.loop.call_later(self.timeout, lambda: self._host_timeout(token))
        self.pool.submit(self._host_worker, token, name, qtype)

    def _host_worker(self, token: int, name: str, qtype: int) -> None:
        try:
            infos = self.resolve(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
            outcome = ("ok", infos)
        except socket.gaierror as e:
            outcome = ("gai", e.errno)
        except Exception as e:  # a broken resolver must not kill the worker
            outcome = ("error", repr(e))
        self._post(lambda: self._host_done(token, name, qtype, outcome))

    def _host_timeout(self, token: int) -> None:
        if self.host_pending.pop(token, None) is None:
            return
        w, followers = self._take(token)
        self._fail_all(w, followers, "host_timeout")

    def _host_done(self, token: int, name: str, qtype: int, outcome) -> None:
        timer = self.host_pending.pop(token, None)
        if timer is None:
            self._count("host_late")
            return
        timer.cancel()
        w, followers = self._take(token)
        if w is None:
            return
        rec = DNSRecord(DNSHeader(id=w.request.header.id, qr=1, rd=1, ra=1), q=DNSQuestion(name, qtype))
        kind, value = outcome
        if kind == "ok":
            family = socket.AF_INET if qtype == QTYPE.A else socket.AF_INET6
            canon = next((i[3] for i in value if i[3]), "")
            owner = name
            if canon and norm(canon) != name:
                rec.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(canon), ttl=self.host_ttl))
                owner = canon
            seen = set()
            for fam, _t, _p, _c, sa in value:
                addr = str(sa[0]).split("%")[0]
                if fam == family and addr not in seen:
                    seen.add(addr)
                    rdata = A(addr) if qtype == QTYPE.A else AAAA(addr)
                    rec.add_answer(RR(owner, qtype, rdata=rdata, ttl=self.host_ttl))
            # a name with addresses of the other family only: NODATA (NOERROR, no answer)
        elif kind == "gai" and value in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            rec.header.rcode = RCODE.NXDOMAIN if value == socket.EAI_NONAME else RCODE.NOERROR
        else:
            self._warn_once("host_resolver_error", name=name, error=str(value))
            rec.header.rcode = RCODE.SERVFAIL
        # NXDOMAIN/NODATA from getaddrinfo carry no SOA: kept host_ttl, like the positive answers
        self.cache.put(rec, self.loop.now(), negative_ttl=self.host_ttl)
        if followers:
            self._answer_followers(followers, rec.pack())
        if w.chain is None and message.client_opt(w.request) is not None:
            rec.add_ar(EDNS0(udp_len=message.OUR_UDP_SIZE))
        self._complete(w, rec, None)

    # -- worker threads -> loop thread -------------------------------------------------------------
    def _post(self, fn: Callable[[], None]) -> None:
        """From any thread: run ``fn`` on the loop thread soon."""
        self.done.put(fn)
        with self._wake_lock:  # close() must not close the fd under us (its number could be reused)
            if self._wake_w is None:
                return
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass  # the pipe is full: the loop will wake anyway

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                fn = self.done.get_nowait()
            except queue.Empty:
                return
            if self.closed:
                continue
            try:
                fn()
            except Exception as e:
                self._warn_once("internal_error", error=repr(e))

    # -- host-side listeners ------------------------------------------------------------------------
    def listen_udp(self, addr: tuple) -> int:
        """Answer queries on a host UDP socket; the bound port."""
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind(tuple(addr))
        s.setblocking(False)
        self.listeners.append(s)

        def on_read() -> None:
            for _ in range(64):
                try:
                    data, peer = s.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue
                self.query(data, lambda out, peer=peer: self._udp_reply(s, out, peer), transport="udp")

        self.loop.add_reader(s, on_read)
        return s.getsockname()[1]

    def _udp_reply(self, sock, data: bytes, peer) -> None:
        try:
            sock.sendto(data, peer)
        except OSError:
            self._count("drop.udp_send")

    def listen_tcp(self, addr) -> None:
        """Answer DNS over TCP (2-byte length framing, several queries per connection, answers
        in completion order as RFC 7766 allows) on (host, port) or a unix socket path."""
        if isinstance(addr, (str, os.PathLike)):
            Path(addr).unlink(missing_ok=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(addr))
            os.chmod(addr, 0o600)
        else:
            fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(tuple(addr))
        s.listen(64)
        s.setblocking(False)
        self.listeners.append(s)
        self.loop.add_reader(s, lambda: self._on_accept(s))

    def _on_accept(self, s) -> None:
        for _ in range(16):
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.tcp_clients) >= MAX_TCP_CLIENTS:
                self._drop("tcp_clients")
                conn.close()
                continue
            conn.setblocking(False)
            self.tcp_clients[conn] = {"buf": b"", "out": b"", "timer": None}
            self._touch(conn)
            self.loop.add_reader(conn, lambda conn=conn: self._on_tcp(conn))

    def _touch(self, conn) -> None:
        st = self.tcp_clients.get(conn)
        if st is None:
            return
        if st["timer"] is not None:
            st["timer"].cancel()
        st["timer"] = self.loop.call_later(self.tcp_idle, lambda: self._close_tcp(conn))

    def _close_tcp(self, conn) -> None:
        st = self.tcp_clients.pop(conn, None)
        if st is None:
            return
        if st["timer"] is not None:
            st["timer"].cancel()
        self.loop.remove_reader(conn)
        self.loop.remove_writer(conn)
        conn.close()

    def _on_tcp(self, conn) -> None:
        st = self.tcp_clients.get(conn)
        if st is None:
            return
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_tcp(conn)
            return
        self._touch(conn)
        buf = st["buf"] + data
        while len(buf) >= 2:
            n = int.from_bytes(buf[:2], "big")
            if len(buf) < 2 + n:
                break
            msg, buf = buf[2 : 2 + n], buf[2 + n :]
            self.query(msg, lambda out, conn=conn: self._tcp_reply(conn, out), transport="tcp")
            if conn not in self.tcp_clients:
                return
        st["buf"] = buf

    def _tcp_reply(self, conn, data: bytes) -> None:
        st = self.tcp_clients.get(conn)
        if st is None:
            return
        st["out"] += len(data).to_bytes(2, "big") + data
        if len(st["out"]) > MAX_TCP_OUT:  # a client that does not read
            self._drop("tcp_backlog")
            self._close_tcp(conn)
            return
        self._touch(conn)
        self._flush_tcp(conn)

    def _flush_tcp(self, conn) -> None:
        st = self.tcp_clients.get(conn)
        if st is None:
            return
        try:
            n = conn.send(st["out"])
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close_tcp(conn)
            return
        st["out"] = st["out"][n:]
        if st["out"]:
            self.loop.add_writer(conn, lambda: self._flush_tcp(conn))
        else:
            self.loop.remove_writer(conn)

    def close(self) -> None:
        """Stop listening, forget pending queries, release sockets and threads."""
        if self.closed:
            return
        self.closed = True
        for conn in list(self.tcp_clients):
            self._close_tcp(conn)
        for s in self.listeners + list(self._up.values()):
            self.loop.remove_reader(s)
            s.close()
        self.listeners, self._up = [], {}
        for token in list(self._qsocks):
            self._release(token)
        if self._timer is not None:
            self._timer.cancel()
        for t in self.host_pending.values():
            t.cancel()
        self.host_pending.clear()
        self.waiting.clear()
        self.followers.clear()
        self.inflight.clear()
        self._key_of.clear()
        self.loop.remove_reader(self._wake_r)
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = None
