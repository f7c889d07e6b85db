"""DnsServer: the I/O side of gangway's DNS. Local answers from engine.dns.zone, a cache, and
forwarding either to the host's system resolver (getaddrinfo, in a thread pool) or raw to
upstream servers (UDP with TCP retry on TC). Listens on host sockets (UDP, TCP, unix) and
answers queries handed over by the bus adapter (services/dns.py)."""
from __future__ import annotations

import concurrent.futures
import os
import queue
import socket
import struct
from pathlib import Path
from typing import Callable

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSRecord

from engine.dns.cache import AnswerCache
from engine.dns.forwarder import Forwarder, parse_hostport
from engine.dns.zone import LocalZone, norm
from gangway.statefile import read_json, write_json

RECORDS_FILE = "dns-records.json"
TCP_IDLE = 30.0
MAX_TCP_CLIENTS = 256


def resolv_conf_servers(path: str) -> tuple[list[str], float]:
    try:
        st = os.stat(path)
        with open(path) as f:
            text = f.read()
    except OSError:
        return [], 0.0
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = parts[1].split("%")[0]
            servers.append(f"[{addr}]:53" if ":" in addr else f"{addr}:53")
    return servers, st.st_mtime


class DnsServer:
    def __init__(self, loop, config: dict, *, gateway: str, host_alias: str, subnet: str, state_dir: Path, log,
                 resolve: Callable | None = None):
        self.loop, self.cfg, self.log = loop, config, log
        self.state_dir = Path(state_dir)
        self.mode = config.get("mode", "upstream")
        self.counters: dict[str, int] = {}
        self.zone = LocalZone(domain=config.get("domain", "gangway.internal"), gateway=gateway, host_alias=host_alias,
                              subnet=subnet, aliases=config.get("aliases", []), ttl=int(config.get("local_ttl", 60)))
        for r in config.get("records", []):
            self.zone.add(r["name"], r["type"], str(r["value"]), r.get("ttl"), source="static")
        self._load_runtime()
        self.cache = AnswerCache(int(config.get("cache_size", 10000)))
        self.resolv_path = config.get("resolv_conf", "/etc/resolv.conf")
        self._resolv_mtime = -1.0
        self._resolv_checked = -1e9
        self.fwd = Forwarder(upstreams=[], rules=config.get("rule", []), timeout=float(config.get("timeout", 2.5)),
                             try_timeout=float(config.get("try_timeout", 0.8)))
        self._refresh_upstreams(force=True)
        self.resolve = resolve or socket.getaddrinfo
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="dns")
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(self._wake_r, self._on_wake)
        self.up4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up4.setblocking(False)
        loop.add_reader(self.up4, lambda: self._on_upstream(self.up4))
        self.up6 = None
        self.waiting: dict[int, tuple] = {}  # token -> (reply, limit, request)
        self._tokens = 0
        self._timer = None
        self.listeners: list = []
        self.tcp_clients: dict = {}

    # -- state -------------------------------------------------------------------------
    def _load_runtime(self) -> None:
        try:
            data = read_json(self.state_dir / RECORDS_FILE, {"records": []})
        except ValueError as e:
            self.log.error("dns_records_corrupt", error=str(e))
            data = {"records": []}
        for r in data.get("records", []):
            try:
                self.zone.add(r["name"], r["type"], r["value"], r.get("ttl"), source="runtime")
            except (KeyError, ValueError) as e:
                self.log.warning("dns_record_skipped", record=r, error=str(e))

    def _save_runtime(self) -> None:
        write_json(self.state_dir / RECORDS_FILE, {"version": 1, "records": self.zone.runtime_records()})

    def _count(self, k: str, n: int = 1) -> None:
        self.counters[k] = self.counters.get(k, 0) + n

    # -- the public API ----------------------------------------------------------------
    def set_guest(self, hostname: str, ip: str) -> None:
        hostname = norm(hostname)
        if not hostname:
            return
        name = f"{hostname}.{self.zone.domain}"
        self.zone.remove(name, "A", source="guest")
        self.zone.add(name, "A", ip, None, source="guest")
        self.cache.entries.clear()
        self.log.info("guest_name", name=name, ip=ip)

    def remove_guest(self, hostname: str) -> None:
        self.zone.remove(f"{norm(hostname)}.{self.zone.domain}", source="guest")
        self.cache.entries.clear()

    def add_record(self, name: str, rtype: str, value: str, ttl: int = 60) -> None:
        name = norm(name)
        if not name or any(len(label) > 63 or not label for label in name.split(".")):
            raise ValueError(f"bad name {name!r}")
        self.zone.add(name, rtype, value, ttl, source="runtime")
        self.cache.entries.clear()
        self._save_runtime()
        self.log.info("record_added", name=name, type=rtype.upper(), value=value)

    def remove_record(self, name: str, rtype: str | None = None, value: str | None = None) -> int:
        n = self.zone.remove(name, rtype, value, source="runtime")
        if n:
            self.cache.entries.clear()
            self._save_runtime()
            self.log.info("record_removed", name=norm(name), count=n)
        return n

    def list_records(self) -> list[dict]:
        return self.zone.all_records()

    def query(self, payload: bytes, reply: Callable[[bytes], None], *, transport: str = "udp") -> None:
        self._count("queries")
        try:
            request = DNSRecord.parse(payload)
        except Exception:
            self._formerr(payload, reply)
            return
        try:
            self._answer(request, reply, 65535 if transport == "tcp" else self._udp_limit(request))
        except Exception as e:  # never let a query kill the service
            self._count("internal_error")
            self.log.warning("query_failed", error=repr(e))
            self._send(reply, self._error(request, RCODE.SERVFAIL), 512)

    # -- answering ---------------------------------------------------------------------
    @staticmethod
    def _udp_limit(request: DNSRecord) -> int:
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                return max(512, min(int(rr.rclass), 65535))
        return 512

    def _formerr(self, payload: bytes, reply) -> None:
        if len(payload) < 12:
            self._count("drop.short")
            return
        qid, flags = struct.unpack_from("!HH", payload)
        if flags & 0x8000:  # a response, not a query: drop
            self._count("drop.not_a_query")
            return
        self._count("formerr")
        reply(struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7900) | RCODE.FORMERR, 0, 0, 0, 0))

    def _error(self, request: DNSRecord, rcode: int) -> DNSRecord:
        r = request.reply()
        r.header.rcode = rcode
        r.header.ra = 1
        return r

    def _send(self, reply, rec: DNSRecord, limit: int) -> None:
        data = rec.pack()
        if len(data) > limit:
            self._count("truncated")
            t = rec.truncate()
            t.header.ra = rec.header.ra
            data = t.pack()
        reply(data)

    def _answer(self, request: DNSRecord, reply, limit: int) -> None:
        h = request.header
        if h.qr or h.opcode != 0 or len(request.questions) != 1:
            self._count("formerr" if h.opcode == 0 else "notimp")
            self._send(reply, self._error(request, RCODE.FORMERR if h.opcode == 0 else RCODE.NOTIMP), limit)
            return
        q = request.q
        local = self.zone.answer(str(q.qname), q.qtype)
        if local is not None:
            self._count("local")
            rcode, answers, auth = local
            r = request.reply()
            r.header.aa = 1
            r.header.ra = 1
            r.header.rcode = rcode
            for rr in answers:
                r.add_answer(rr)
            for rr in auth:
                r.add_auth(rr)
            if rcode == RCODE.NXDOMAIN:
                self._count("nxdomain")
            self._send(reply, r, limit)
            return
        now = self.loop.now()
        cached = self.cache.get(request, now)
        if cached is not None:
            self._count("cache_hits")
            self._send(reply, cached, limit)
            return
        self._tokens += 1
        token = self._tokens
        self.waiting[token] = (reply, limit, request)
        self._count("forwarded")
        if self.mode == "host" and q.qtype in (QTYPE.A, QTYPE.AAAA):
            self.pool.submit(self._host_lookup, token, request)
            return
        self._refresh_upstreams()
        self._run(self.fwd.start(token, request, now))

    # -- host mode ---------------------------------------------------------------------
    def _host_lookup(self, token: int, request: DNSRecord) -> None:
        q = request.q
        name = str(q.qname).rstrip(".")
        family = socket.AF_INET if q.qtype == QTYPE.A else socket.AF_INET6
        r = request.reply()
        r.header.ra = 1
        try:
            infos = self.resolve(name, None, family, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
            canon = next((i[3] for i in infos if i[3]), "")
            owner = q.qname
            if canon and canon.rstrip(".").lower() != name.lower():
                r.add_answer(RR(q.qname, QTYPE.CNAME, rdata=CNAME(canon), ttl=10))
                owner = canon
            seen = set()
            for fam, _, _, _, sa in infos:
                if fam == family and sa[0] not in seen:
                    seen.add(sa[0])
                    r.add_answer(RR(owner, q.qtype, rdata=A(sa[0]) if family == socket.AF_INET else AAAA(sa[0]), ttl=10))
        except socket.gaierror as e:
            if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                if e.errno == socket.EAI_NONAME:
                    r.header.rcode = RCODE.NXDOMAIN
            else:
                r.header.rcode = RCODE.SERVFAIL
        except Exception:
            r.header.rcode = RCODE.SERVFAIL
        self.done.put(("done", token, r))
        os.write(self._wake_w, b"x")

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        actions = []
        while True:
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                break
            if item[0] == "tcp_answer":
                _, server, data, qid = item
                actions += self.fwd.on_answer(data, server, self.loop.now(), via_tcp=True)
            elif item[0] == "tcp_failed":
                actions += self.fwd.tcp_failed(item[1], self.loop.now())
            else:
                actions.append(item)
        self._run(actions)

    # -- upstream mode -----------------------------------------------------------------
    def _refresh_upstreams(self, force: bool = False) -> None:
        configured = self.cfg.get("upstreams") or []
        if configured:
            if force:
                self.fwd.upstreams = [parse_hostport(u) for u in configured]
            return
        now = self.loop.now()
        if not force and now - self._resolv_checked < 1.0:
            return
        self._resolv_checked = now
        try:
            mtime = os.stat(self.resolv_path).st_mtime
        except OSError:
            mtime = 0.0
        if mtime != self._resolv_mtime:
            servers, self._resolv_mtime = resolv_conf_servers(self.resolv_path)
            self.fwd.upstreams = [parse_hostport(s) for s in servers]
            self.log.info("upstreams", source=self.resolv_path, servers=servers)

    def _sock_for(self, server) -> socket.socket:
        if ":" not in server[0]:
            return self.up4
        if self.up6 is None:
            self.up6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self.up6.setblocking(False)
            self.loop.add_reader(self.up6, lambda: self._on_upstream(self.up6))
        return self.up6

    def _on_upstream(self, sock) -> None:
        actions = []
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # ICMP errors from a dead upstream: the timer fails over
            actions += self.fwd.on_answer(data, (addr[0], addr[1]), self.loop.now())
        self._run(actions)

    def _tcp_query(self, server, wire: bytes, qid: int) -> None:
        try:
            fam = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(server)
                s.sendall(struct.pack("!H", len(wire)) + wire)
                buf = b""
                while len(buf) < 2 or len(buf) < 2 + struct.unpack_from("!H", buf)[0]:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
            self.done.put(("tcp_answer", server, buf[2 : 2 + struct.unpack_from("!H", buf)[0]], qid))
        except OSError:
            self.done.put(("tcp_failed", qid))
        os.write(self._wake_w, b"x")

    def _run(self, actions: list) -> None:
        now = self.loop.now()
        for act in actions:
            kind = act[0]
            if kind == "send":
                try:
                    self._sock_for(act[1]).sendto(act[2], act[1])
                except OSError:
                    self._count("upstream_send_error")
            elif kind == "tcp":
                self.pool.submit(self._tcp_query, act[1], act[2], act[3])
            elif kind == "done":
                entry = self.waiting.pop(act[1], None)
                if entry is None:
                    continue
                reply, limit, request = entry
                rec = act[2]
                self.cache.put(rec, now)
                if rec.header.rcode == RCODE.NXDOMAIN:
                    self._count("nxdomain")
                self._send(reply, rec, limit)
            elif kind == "fail":
                entry = self.waiting.pop(act[1], None)
                if entry is None:
                    continue
                self._count("servfail")
                reply, limit, request = entry
                self._send(reply, self._error(request, RCODE.SERVFAIL), limit)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.fwd.next_deadline()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, lambda: self._run(self.fwd.on_timer(self.loop.now())))

    # -- host-side listeners -----------------------------------------------------------
    def listen_udp(self, addr: tuple) -> int:
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind(addr)
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

    @staticmethod
    def _udp_reply(sock, data: bytes, peer) -> None:
        try:
            sock.sendto(data, peer)
        except OSError:
            pass

    def listen_tcp(self, addr) -> None:
        if isinstance(addr, str):
            Path(addr).unlink(missing_ok=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(addr)
            os.chmod(addr, 0o600)
        else:
            fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
        s.listen(64)
        s.setblocking(False)
        self.listeners.append(s)

        def on_accept() -> None:
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self.tcp_clients) >= MAX_TCP_CLIENTS:
                self._count("drop.tcp_clients")
                conn.close()
                return
            conn.setblocking(False)
            self.tcp_clients[conn] = {"buf": b"", "out": b"", "timer": None}
            self._touch(conn)
            self.loop.add_reader(conn, lambda: self._on_tcp(conn))

        self.loop.add_reader(s, on_accept)

    def _touch(self, conn) -> None:
        st = self.tcp_clients.get(conn)
        if st is None:
            return
        if st["timer"] is not None:
            st["timer"].cancel()
        st["timer"] = self.loop.call_later(TCP_IDLE, lambda: self._close_tcp(conn))

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
            (n,) = struct.unpack_from("!H", buf)
            if len(buf) < 2 + n:
                break
            msg, buf = buf[2 : 2 + n], buf[2 + n :]
            self.query(msg, lambda out, conn=conn: self._tcp_reply(conn, out), transport="tcp")
        st["buf"] = buf
        if len(buf) > 70000:
            self._close_tcp(conn)

    def _tcp_reply(self, conn, data: bytes) -> None:
        st = self.tcp_clients.get(conn)
        if st is None:
            return
        st["out"] += struct.pack("!H", len(data)) + data
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
        for conn in list(self.tcp_clients):
            self._close_tcp(conn)
        for s in self.listeners:
            self.loop.remove_reader(s)
            s.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
