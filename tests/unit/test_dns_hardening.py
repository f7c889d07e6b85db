"""DnsServer towards its upstreams: a random source port per query (RFC 5452), answers from the
wrong address dropped, sockets released, a cap with a shared-socket fallback; per-domain rules
also in host mode.

Network safety: every address here is in 127.0.0.0/8; host mode uses an injected resolver.
"""
import socket
import threading
import time

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

import services.dnsserver as dnsserver
from bus.loop import Loop
from services.dnsserver import DnsServer
from tests.unit.dnsrig import NET, Log, Running



class Upstream:
    """A UDP DNS server on 127.0.0.77 that notes each query's source port. With ``spoof``, every
    query first gets a forged answer (6.6.6.6) from 127.0.0.80, the real one 50 ms later."""

    def __init__(self, spoof: bool = False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.77", 0))
        self.sock.settimeout(0.05)
        self.spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.spoofer.bind(("127.0.0.80", 0))
        self.spoof = spoof
        self.peers: list = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def hostport(self) -> str:
        return "127.0.0.77:%d" % self.sock.getsockname()[1]

    def _answer(self, q: DNSRecord, ip: str) -> bytes:
        r = q.reply()
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
        return r.pack()

    def _serve(self) -> None:
        while not self.stop_flag.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            q = DNSRecord.parse(data)
            self.peers.append(peer)
            if self.spoof:
                self.spoofer.sendto(self._answer(q, "6.6.6.6"), peer)
                time.sleep(0.05)
            self.sock.sendto(self._answer(q, "10.99.0.1"), peer)

    def close(self) -> None:
        self.stop_flag.set()
        self.thread.join(2)
        self.sock.close()
        self.spoofer.close()


def addrs(rec):
    return [str(rr.rdata) for rr in rec.rr if rr.rtype == QTYPE.A]


@pytest.fixture
def up():
    u = Upstream()
    yield u
    u.close()


def test_each_query_has_its_own_source_port_and_socket_is_released(tmp_path, up):
    r = Running({"upstreams": [up.hostport]}, tmp_path)
    try:
        for i in range(6):
            assert addrs(r.ask(f"n{i}.example.test")) == ["10.99.0.1"]
        ports = {p for _, p in up.peers}
        assert len(up.peers) == 6 and len(ports) >= 4  # random ephemeral ports; a repeat is possible
        assert r.settle("upstream_sockets", 0) == 0
        assert r.srv.counters.get("upstream_shared_socket", 0) == 0
    finally:
        r.stop()


def test_answer_from_another_address_never_reaches_the_client(tmp_path):
    up = Upstream(spoof=True)
    r = Running({"upstreams": [up.hostport]}, tmp_path)
    try:
        for i in range(3):
            assert addrs(r.ask(f"s{i}.example.test")) == ["10.99.0.1"]
        assert addrs(r.ask("s0.example.test")) == ["10.99.0.1"]  # and the cache holds the real one
        assert "upstream.ignored_wrong_server" not in r.srv.counters  # the kernel dropped the forgeries
    finally:
        r.stop()
        up.close()


def test_shared_socket_beyond_the_cap(tmp_path, up, monkeypatch):
    monkeypatch.setattr(dnsserver, "MAX_QUERY_SOCKETS", 0)
    r = Running({"upstreams": [up.hostport]}, tmp_path)
    try:
        for i in range(3):
            assert addrs(r.ask(f"c{i}.example.test")) == ["10.99.0.1"]
        assert len({p for _, p in up.peers}) == 1
        assert r.srv.counters["upstream_shared_socket"] == 3 and r.srv.counters["upstream_sockets"] == 0
    finally:
        r.stop()


@pytest.mark.parametrize("kind", ["silent", "refused"])
def test_dead_upstream_servfail_in_bound_and_sockets_released(tmp_path, kind):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.79", 0))
    port = dead.getsockname()[1]
    if kind == "refused":  # nobody on the port: ICMP port unreachable on the connected socket
        dead.close()
    r = Running({"upstreams": [f"127.0.0.79:{port}"], "timeout": 0.5, "try_timeout": 0.15}, tmp_path)
    try:
        t0 = time.monotonic()
        assert r.ask("www.example.test").header.rcode == RCODE.SERVFAIL
        if kind == "silent":  # the whole timeout is waited out
            assert 0.4 <= time.monotonic() - t0 < 1.2
        else:  # the ICMP error ends it: no waiting for the timeout
            assert r.srv.counters["upstream.fail_refused"] == 1
            assert r.srv.counters.get("upstream.fail_timeout", 0) == 0
        assert r.settle("upstream_sockets", 0) == 0
        assert r.srv.counters.get("internal_error", 0) == 0
    finally:
        r.stop()
        dead.close()


def test_close_releases_sockets_of_pending_queries(tmp_path):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.79", 0))
    loop = Loop()
    srv = DnsServer(loop, {"upstreams": ["127.0.0.79:%d" % dead.getsockname()[1]]}, **NET, state_dir=tmp_path,
                    log=Log())
    out = []
    for i in range(3):
        srv.query(DNSRecord.question(f"p{i}.example.test").pack(), out.append)
    assert srv.counters["upstream_sockets"] == 3 and not out
    srv.close()
    assert srv.counters["upstream_sockets"] == 0
    dead.close()


def test_host_mode_sends_rule_domains_to_the_rule_servers(tmp_path, up):
    calls = []

    def resolve(name, *args):
        calls.append(name)
        if name == "known.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.5.5.5", 0))]
        raise socket.gaierror(socket.EAI_NONAME, "not known")

    r = Running({"mode": "host", "resolv_conf": str(tmp_path / "absent"),
                 "rule": [{"domain": "corp.example", "upstreams": [up.hostport]}]}, tmp_path, resolve=resolve)
    try:
        assert addrs(r.ask("www.corp.example")) == ["10.99.0.1"]  # the rule's server, not getaddrinfo
        assert addrs(r.ask("known.test")) == ["10.5.5.5"]  # other names: the system resolver
        assert r.ask("www.corp.example", "TXT").header.rcode == RCODE.NOERROR  # any type via the rule
        assert calls == ["known.test"] and len(up.peers) == 2
    finally:
        r.stop()
