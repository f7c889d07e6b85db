"""services.dnsserver.DnsServer end to end on loopback: real dnslib upstreams (127.0.0.77/78),
host-side UDP/TCP/unix listeners, a bus.loop.Loop stepped in a background thread.

Network safety: every address here is in 127.0.0.0/8; host mode uses an injected resolver.
"""
import json
import os
import random
import socket
import struct
import tempfile
import threading
import time

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, DNSRecord
from dnslib.server import DNSHandler, DNSServer
from hypothesis import given, settings, strategies as st

from bus.loop import Loop
from services.dnsserver import DnsServer
from tests.dnsupstream import QUIET, ZoneResolver
from tests.unit.dnsrig import NET, Log, Running

ALIASES = ["host.docker.internal", "gateway.docker.internal", "host.containers.internal"]


class SmallUdpHandler(DNSHandler):
    udplen = 512  # a real server's behaviour: answers over 512 bytes by UDP come back with TC


class NegResolver(ZoneResolver):
    """ZoneResolver plus an SOA in NXDOMAIN answers (so they are cached) and a slow name."""

    def resolve(self, request, handler):
        name = str(request.q.qname).rstrip(".").lower()
        self.opts = getattr(self, "opts", {})
        self.opts[name] = [rr.rclass for rr in request.ar if rr.rtype == QTYPE.OPT]
        if name == "slow.example.test":
            time.sleep(0.3)
        reply = super().resolve(request, handler)
        if reply.header.rcode == RCODE.NXDOMAIN:
            reply.add_auth(RR("example.test", QTYPE.SOA, rdata=SOA("ns.example.test", "h.example.test",
                                                                   (1, 2, 3, 4, 30)), ttl=300))
        return reply


class Up:
    def __init__(self, address, tag, ttl=300, port=0):
        self.resolver = NegResolver(tag, ttl)
        self.udp = DNSServer(self.resolver, address=address, port=port, logger=QUIET, handler=SmallUdpHandler)
        self.port = self.udp.server.server_address[1]
        self.tcp = DNSServer(self.resolver, address=address, port=self.port, tcp=True, logger=QUIET)
        self.address = address
        for srv in (self.udp, self.tcp):  # a short poll interval: stop() returns quickly
            threading.Thread(target=srv.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def hostport(self):
        return f"{self.address}:{self.port}"

    def stop(self):
        for s in (self.udp, self.tcp):
            s.server.shutdown()
            s.server.server_close()


@pytest.fixture(scope="module")
def ups():
    a, b = Up("127.0.0.77", "u1", ttl=120), Up("127.0.0.78", "u2", ttl=120)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def run(tmp_path, ups):
    a, b = ups
    records = [{"name": "db.gangway.internal", "type": "A", "value": "192.168.65.9"},
               {"name": "ext.gangway.internal", "type": "CNAME", "value": "www.example.test"},
               {"name": "_sip._udp.gangway.internal", "type": "SRV", "value": "0 5 5060 db.gangway.internal"}]
    cfg = {"mode": "upstream", "upstreams": [a.hostport], "aliases": ALIASES, "records": records,
           "rule": [{"domain": "corp.example", "upstreams": [b.hostport]}]}
    r = Running(cfg, tmp_path)
    yield r
    r.stop()


def texts(rec):
    return [str(rr.rdata) for rr in rec.rr]


def test_local_names_ptr_nodata_nxdomain(run):
    assert texts(run.ask("host.gangway.internal")) == ["192.168.65.254"]
    assert texts(run.ask("gateway.docker.internal")) == ["192.168.65.1"]
    assert texts(run.ask("host.containers.internal")) == ["192.168.65.254"]
    assert texts(run.ask("db.gangway.internal")) == ["192.168.65.9"]
    assert texts(run.ask("_sip._udp.gangway.internal", "SRV")) == ["0 5 5060 db.gangway.internal."]
    assert texts(run.ask("9.65.168.192.in-addr.arpa", "PTR")) == ["db.gangway.internal."]
    nodata = run.ask("host.gangway.internal", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr and nodata.auth[0].rtype == QTYPE.SOA
    assert nodata.header.aa == 1
    nx = run.ask("nothere.gangway.internal")
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.auth[0].rtype == QTYPE.SOA


def test_guests_by_dhcp_name(run):
    run.stop_flag.set()
    run.thread.join(2)
    run.srv.set_guest("VM-One", "192.168.65.2")
    run.srv.set_guest("host", "192.168.65.3")  # may not shadow a built-in name
    run.srv.set_guest("bad name!", "192.168.65.4")
    run.stop_flag.clear()
    run.thread = threading.Thread(target=run._run, daemon=True)
    run.thread.start()
    assert texts(run.ask("vm-one.gangway.internal")) == ["192.168.65.2"]
    assert texts(run.ask("2.65.168.192.in-addr.arpa", "PTR")) == ["vm-one.gangway.internal."]
    assert texts(run.ask("host.gangway.internal")) == ["192.168.65.254"]
    run.stop_flag.set()
    run.thread.join(2)
    run.srv.remove_guest("vm-one")
    run.stop_flag.clear()
    run.thread = threading.Thread(target=run._run, daemon=True)
    run.thread.start()
    assert run.ask("vm-one.gangway.internal").header.rcode == RCODE.NXDOMAIN
    assert any(e[1] == "guest_name_rejected" for e in run.log.events)


@pytest.mark.parametrize("qtype,expect", [("TXT", '"served-by=u1"'), ("MX", "10 mail.example.test."),
                                          ("SRV", "0 5 5060 sip.example.test."), ("AAAA", "fd00::1"),
                                          ("CAA", '0 issue "ca.example.test"')])
def test_any_type_passes_through(run, qtype, expect):
    assert texts(run.ask("www.example.test", qtype)) == [expect]


def test_rule_sends_domain_to_second_server(run, ups):
    before = ups[1].resolver.count("u2.corp.example")
    assert texts(run.ask("u2.corp.example", "TXT")) == ['"served-by=u2"']
    assert ups[1].resolver.count("u2.corp.example") == before + 1 and ups[0].resolver.count("u2.corp.example") == 0


def test_cname_to_outside_is_chased(run):
    r = run.ask("ext.gangway.internal")
    assert [rr.rtype for rr in r.rr] == [QTYPE.CNAME, QTYPE.A] and texts(r)[-1] == "10.99.0.1"


def test_cache_counts_ttl_down_and_caches_negative(run, ups):
    n0, m0 = ups[0].resolver.count("www.example.test"), ups[0].resolver.count("missing.example.test")
    first = run.ask("www.example.test")
    assert first.rr[0].ttl == 120
    run.offset += 30.0
    again = run.ask("www.example.test")
    assert 89 <= again.rr[0].ttl <= 90
    assert ups[0].resolver.count("www.example.test") == n0 + 1
    assert run.ask("missing.example.test").header.rcode == RCODE.NXDOMAIN
    assert run.ask("missing.example.test").header.rcode == RCODE.NXDOMAIN
    assert ups[0].resolver.count("missing.example.test") == m0 + 1  # cached for the SOA minimum (30 s)
    run.offset += 31.0
    run.ask("missing.example.test")
    assert ups[0].resolver.count("missing.example.test") == m0 + 2
    c = run.srv.counters
    assert c["cache_hits"] == 2 and c["forwarded"] == 3 and c["nxdomain"] == 3


def test_large_answer_tc_over_udp_whole_over_tcp(run, ups):
    b0 = ups[0].resolver.count("big.example.test")
    udp = run.ask("big.example.test", "TXT")
    assert udp.header.tc == 1 and not udp.rr
    tcp = run.ask("big.example.test", "TXT", tcp=True)
    assert tcp.header.tc == 0 and len(tcp.rr) == 12
    edns = run.ask("big.example.test", "TXT", edns=4096)  # over our udp_max (1232): still TC
    assert edns.header.tc == 1 and edns.ar and edns.ar[0].rtype == QTYPE.OPT
    assert run.srv.counters["upstream.tcp_retry"] == 1  # the upstream's TC answer was fetched again by TCP
    assert ups[0].resolver.count("big.example.test") == b0 + 2  # once by UDP (TC), once by TCP; then cached


def test_edns_passed_through_upstream_large_udp(tmp_path, ups):
    r = Running({"upstreams": [ups[1].hostport], "udp_max": 4096}, tmp_path)
    try:
        whole = r.ask("big.example.test", "TXT", edns=4096)  # within udp_max: whole over UDP
        assert whole.header.tc == 0 and len(whole.rr) == 12
        assert ups[1].resolver.opts["big.example.test"] == [4096]  # the client's OPT went upstream
        r.ask("www.example.test", "SRV")
        assert ups[1].resolver.opts["www.example.test"] == []  # and none was added
    finally:
        r.stop()


def test_dead_upstream_servfail_within_bound(tmp_path):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read: no answer, no ICMP
    dead.bind(("127.0.0.79", 0))
    r = Running({"upstreams": [f"127.0.0.79:{dead.getsockname()[1]}"], "timeout": 0.6, "try_timeout": 0.2}, tmp_path)
    try:
        t0 = time.monotonic()
        ans = r.ask("www.example.test")
        elapsed = time.monotonic() - t0
        assert ans.header.rcode == RCODE.SERVFAIL and 0.5 <= elapsed < 1.2
        assert r.srv.counters["servfail"] == 1 and r.srv.counters["upstream.try_timeout"] >= 2
    finally:
        r.stop()
        dead.close()


def test_closed_upstream_port_servfail_at_once_or_next_server(tmp_path, ups):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.79", 0))
    closed = f"127.0.0.79:{probe.getsockname()[1]}"
    probe.close()  # nothing listens there now: the kernel answers ICMP port unreachable
    r = Running({"upstreams": [closed], "timeout": 5, "try_timeout": 2}, tmp_path)
    try:
        assert r.ask("www.example.test").header.rcode == RCODE.SERVFAIL
        c = r.srv.counters
        assert c["upstream.port_unreachable"] == 1 and c["upstream.fail_refused"] == 1, c
        assert "upstream.try_timeout" not in c and "upstream.fail_timeout" not in c, c
    finally:
        r.stop()
    r = Running({"upstreams": [closed, ups[1].hostport], "timeout": 5, "try_timeout": 2}, tmp_path)
    try:
        assert texts(r.ask("www.example.test", "TXT")) == ['"served-by=u2"']
        c = r.srv.counters
        assert c["upstream.port_unreachable"] == 1 and "upstream.try_timeout" not in c, c
    finally:
        r.stop()


def test_dnssec_flags_keep_cache_entries_apart(run, ups):
    """An answer fetched without DO (no RRSIGs) never answers a query with DO, nor one with CD."""
    n0 = ups[0].resolver.count("sec.example.test")
    assert run.ask("sec.example.test").header.rcode == RCODE.NXDOMAIN  # negative answers are cached too
    plain_opt = run.ask("sec.example.test", edns=1232).ar[-1]
    assert plain_opt.rtype == QTYPE.OPT and not plain_opt.ttl & 0x8000
    assert ups[0].resolver.count("sec.example.test") == n0 + 1  # the second came from the cache
    run.ask("sec.example.test", do=True)
    assert ups[0].resolver.count("sec.example.test") == n0 + 2  # asked upstream again, with DO
    r = run.ask("sec.example.test", do=True)
    assert r.ar[-1].rtype == QTYPE.OPT and r.ar[-1].ttl & 0x8000  # DO copied back (RFC 3225)
    assert ups[0].resolver.count("sec.example.test") == n0 + 2  # now from the DO entry
    run.ask("sec.example.test", cd=True)
    assert ups[0].resolver.count("sec.example.test") == n0 + 3


def test_identical_questions_in_flight_go_upstream_once(run, ups):
    """Five clients ask the same slow name at once (and one over TCP): one upstream query,
    each client gets the answer under its own id; a different type is not merged."""
    n0 = ups[0].resolver.count("slow.example.test")
    socks, ids = [], []
    for i in range(5):
        q = DNSRecord.question("slow.example.test", "TXT")
        if i == 2:
            q.add_ar(EDNS0(udp_len=1232))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(q.pack(), ("127.0.0.1", run.port))
        socks.append(s)
        ids.append(q.header.id)
    tcp = run.ask("slow.example.test", "TXT", tcp=True)
    other = run.ask("slow.example.test", "MX")
    answers = [DNSRecord.parse(s.recv(4096)) for s in socks]
    for s in socks:
        s.close()
    assert [a.header.id for a in answers] == ids
    for a in answers + [tcp, other]:  # the test upstream: NXDOMAIN with an SOA
        assert a.header.rcode == RCODE.NXDOMAIN and a.auth[0].rtype == QTYPE.SOA
    assert answers[2].ar and answers[2].ar[-1].rtype == QTYPE.OPT  # shaped for its own request
    assert not answers[0].ar
    assert ups[0].resolver.count("slow.example.test") == n0 + 2  # TXT once, MX once
    assert run.srv.counters["coalesced"] == 5
    assert run.srv.counters["pending"] == 0 and run.srv.inflight == {}


def test_failover_to_second_upstream(tmp_path, ups):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.79", 0))
    r = Running({"upstreams": [f"127.0.0.79:{dead.getsockname()[1]}", ups[1].hostport], "try_timeout": 0.2}, tmp_path)
    try:
        t0 = time.monotonic()
        assert texts(r.ask("www.example.test", "TXT")) == ['"served-by=u2"']
        assert 0.15 < time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        assert texts(r.ask("www.example.test", "MX")) == ["10 mail.example.test."]
        assert time.monotonic() - t0 < 0.15  # the silent server is now tried last
    finally:
        r.stop()
        dead.close()


def test_loop_not_blocked_by_slow_upstream(run):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("slow", run.ask("slow.example.test")))
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    assert texts(run.ask("host.gangway.internal")) == ["192.168.65.254"]
    assert time.monotonic() - t0 < 0.2
    t.join(3)
    assert out["slow"].header.rcode == RCODE.NXDOMAIN


def test_tcp_pipelined_queries_and_unix_socket(run, tmp_path):
    path = str(tmp_path / "dns.sock")
    run.stop_flag.set()
    run.thread.join(2)
    run.srv.listen_tcp(path)
    run.stop_flag.clear()
    run.thread = threading.Thread(target=run._run, daemon=True)
    run.thread.start()
    for fam, addr in ((socket.AF_INET, ("127.0.0.1", run.tcp_port)), (socket.AF_UNIX, path)):
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(addr)
            qs = [DNSRecord.question(n, t) for n, t in (("host.gangway.internal", "A"), ("www.example.test", "TXT"),
                                                        ("big.example.test", "TXT"))]
            s.sendall(b"".join(struct.pack("!H", len(q.pack())) + q.pack() for q in qs))
            got = {}
            buf = b""
            while len(got) < 3:
                while len(buf) < 2 or len(buf) < 2 + struct.unpack_from("!H", buf)[0]:
                    buf += s.recv(65536)
                n = struct.unpack_from("!H", buf)[0]
                rec, buf = DNSRecord.parse(buf[2 : 2 + n]), buf[2 + n :]
                got[rec.header.id] = rec
            assert {q.header.id for q in qs} == set(got)
            assert len(got[qs[2].header.id].rr) == 12


def test_malformed_formerr_and_drops(run):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        q = DNSRecord.question("www.example.test").pack()
        s.sendto(q[:-3], ("127.0.0.1", run.port))
        data = s.recv(512)
        assert data[:2] == q[:2] and data[3] & 0xF == RCODE.FORMERR
        s.sendto(b"\x01\x02\x03", ("127.0.0.1", run.port))
        s.sendto(bytes([q[0], q[1], 0x80 | q[2]]) + q[3:], ("127.0.0.1", run.port))  # a response: dropped
        s.settimeout(0.2)
        with pytest.raises(socket.timeout):
            s.recv(512)
    c = run.srv.counters
    assert c["formerr"] == 1 and c["drops"] == 2 and c["drop.short"] == 1 and c["drop.not_a_query"] == 1


def test_runtime_records_persist(tmp_path):
    loop = Loop()
    srv = DnsServer(loop, {"upstreams": ["127.0.0.77:53"]}, **NET, state_dir=tmp_path, log=Log())
    srv.add_record("api.gangway.internal", "A", "192.168.65.77")
    srv.add_record("api.gangway.internal", "TXT", "v=1", ttl=5)
    srv.add_record("alias.gangway.internal", "CNAME", "api.gangway.internal")
    for bad in (("x.gangway.internal", "A", "nope"), ("x y", "A", "192.168.65.1"), ("x.test", "HINFO", "a b"),
                ("host.gangway.internal", "A", "192.168.65.5")):
        with pytest.raises(ValueError):
            srv.add_record(*bad)
    assert srv.remove_record("alias.gangway.internal") == 1
    assert srv.remove_record("nothing.gangway.internal") == 0
    srv.close()
    saved = json.loads((tmp_path / "dns-records.json").read_text())
    assert saved["version"] == 1 and len(saved["records"]) == 2
    srv2 = DnsServer(Loop(), {"upstreams": ["127.0.0.77:53"]}, **NET, state_dir=tmp_path, log=Log())
    mine = [r for r in srv2.list_records() if r["source"] == "runtime"]
    assert {(r["name"], r["type"], r["value"], r["ttl"]) for r in mine} == {
        ("api.gangway.internal", "A", "192.168.65.77", 60), ("api.gangway.internal", "TXT", "v=1", 5)}
    out = []
    srv2.query(DNSRecord.question("api.gangway.internal").pack(), out.append)
    assert texts(DNSRecord.parse(out[0])) == ["192.168.65.77"]
    srv2.close()


def test_corrupt_state_file_is_survived(tmp_path):
    (tmp_path / "dns-records.json").write_text("{not json")
    log = Log()
    srv = DnsServer(Loop(), {}, **NET, state_dir=tmp_path, log=log)
    assert any(e[1] == "dns_records_unreadable" for e in log.events)
    srv.close()


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"dns.records\[0\]"):
        DnsServer(Loop(), {"records": [{"name": "a.test", "type": "A", "value": "x"}]}, **NET, state_dir=tmp_path,
                  log=Log())
    with pytest.raises(ValueError, match="mode"):
        DnsServer(Loop(), {"mode": "magic"}, **NET, state_dir=tmp_path, log=Log())


def test_resolv_conf_reread_when_changed(tmp_path):
    """resolv.conf has no port: the live part needs an upstream on 127.x.y.z:53 (root only)."""
    resolv = tmp_path / "resolv.conf"
    addr_a = f"127.0.{random.randrange(100, 250)}.{random.randrange(2, 250)}"
    addr_b = f"127.0.{random.randrange(100, 250)}.{random.randrange(2, 250)}"
    resolv.write_text(f"# test\nsearch example\nnameserver {addr_a}\noptions ndots:1\n")
    ups = []
    try:
        for addr, tag in ((addr_a, "ra"), (addr_b, "rb")):
            ups.append(Up(addr, tag, port=53))
    except (OSError, PermissionError):
        pass
    r = Running({"mode": "upstream", "upstreams": [], "resolv_conf": str(resolv), "timeout": 0.5,
                 "try_timeout": 0.2}, tmp_path)
    try:
        assert r.srv.fwd.upstreams == [(addr_a, 53)]
        assert len(ups) == 2 or os.geteuid() != 0
        if len(ups) == 2:
            assert texts(r.ask("www.example.test", "TXT")) == ['"served-by=ra"']
        resolv.write_text(f"nameserver {addr_b}\n")
        os.utime(resolv, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        ans = r.ask("www.example.test", "MX")
        assert r.srv.fwd.upstreams == [(addr_b, 53)]
        if len(ups) == 2:
            assert ans.header.rcode == RCODE.NOERROR and ups[1].resolver.count("www.example.test") == 1
        resolv.unlink()
        assert r.ask("www.example.test", "SRV").header.rcode == RCODE.SERVFAIL  # no servers left
    finally:
        r.stop()
        for u in ups:
            u.stop()


# -- host mode -------------------------------------------------------------------------------
def fake_resolver(calls):
    def resolve(name, port, family, socktype, proto, flags):
        calls.append(name)
        if name == "known.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "real.known.test", ("10.5.5.5", 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.5.5.5", 0)),
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::5", 0, 0, 0))]
        if name == "v4only.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "v4only.test", ("10.5.5.6", 0))]
        if name == "slow.test":
            time.sleep(1.0)
            return []
        if name == "lazy.test":
            time.sleep(0.3)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.5.5.7", 0))]
        if name == "broken.test":
            raise socket.gaierror(socket.EAI_AGAIN, "temporary failure")
        raise socket.gaierror(socket.EAI_NONAME, "not known")
    return resolve


def test_host_mode(tmp_path):
    calls = []
    r = Running({"mode": "host", "resolv_conf": str(tmp_path / "absent"), "timeout": 0.5}, tmp_path,
                resolve=fake_resolver(calls))
    try:
        a = r.ask("known.test")
        assert [(rr.rtype, str(rr.rdata)) for rr in a.rr] == [(QTYPE.CNAME, "real.known.test."), (QTYPE.A, "10.5.5.5")]
        assert texts(r.ask("known.test", "AAAA"))[-1] == "fd00::5"
        nodata = r.ask("v4only.test", "AAAA")
        assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr
        assert r.ask("unknown.test").header.rcode == RCODE.NXDOMAIN
        assert r.ask("unknown.test").header.rcode == RCODE.NXDOMAIN
        assert calls.count("unknown.test") == 1  # the negative answer was cached (host_ttl)
        assert r.ask("broken.test").header.rcode == RCODE.SERVFAIL
        assert r.ask("broken.test").header.rcode == RCODE.SERVFAIL
        assert calls.count("broken.test") == 2  # a failure never is
        assert r.ask("known.test", "TXT").header.rcode == RCODE.NOTIMP  # no upstream servers known
        assert texts(r.ask("host.gangway.internal")) == ["192.168.65.254"]  # local names still local
        t0 = time.monotonic()
        assert r.ask("slow.test").header.rcode == RCODE.SERVFAIL
        assert time.monotonic() - t0 < 0.9
        r.ask("known.test")
        assert calls.count("known.test") == 2  # A then AAAA; the second A came from the cache
    finally:
        r.stop()


def test_host_mode_merges_identical_lookups_and_fails_them_together(tmp_path):
    calls = []
    r = Running({"mode": "host", "resolv_conf": str(tmp_path / "absent"), "timeout": 0.6}, tmp_path,
                resolve=fake_resolver(calls))
    try:
        for name, want in (("lazy.test", ["10.5.5.7"] * 3), ("slow.test", [])):
            socks = []
            for _ in range(3):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(3)
                s.sendto(DNSRecord.question(name).pack(), ("127.0.0.1", r.port))
                socks.append(s)
            got = [DNSRecord.parse(s.recv(4096)) for s in socks]
            for s in socks:
                s.close()
            if want:
                assert [texts(a)[0] for a in got] == want
            else:  # the timeout fails every client that joined
                assert [a.header.rcode for a in got] == [RCODE.SERVFAIL] * 3
            assert calls.count(name) == 1
        assert r.srv.counters["coalesced"] == 4 and r.srv.counters["fail.host_timeout"] == 3
    finally:
        r.stop()


def test_host_mode_forwards_other_types_when_upstreams_known(tmp_path, ups):
    r = Running({"mode": "host", "upstreams": [ups[0].hostport]}, tmp_path, resolve=fake_resolver([]))
    try:
        assert texts(r.ask("www.example.test", "TXT")) == ['"served-by=u1"']
        assert texts(r.ask("known.test"))[-1] == "10.5.5.5"
    finally:
        r.stop()


# -- fuzz ------------------------------------------------------------------------------------
_FUZZ_DIR = tempfile.mkdtemp(prefix="gangway-dns-fuzz-")
_FUZZ = DnsServer(Loop(), {"mode": "upstream", "upstreams": [], "resolv_conf": os.path.join(_FUZZ_DIR, "absent"),
                           "records": [{"name": "t.gangway.internal", "type": "TXT", "value": "x" * 600}]},
                  **NET, state_dir=_FUZZ_DIR, log=Log())

header = st.builds(lambda i, f, c: struct.pack("!HHHHHH", i, f, *c), st.integers(0, 65535),
                   st.integers(0, 65535), st.tuples(*[st.integers(0, 3)] * 4))
names = st.sampled_from([b"\x01t\x07gangway\x08internal\x00", b"\x04host\x07gangway\x08internal\x00",
                         b"\x03www\x07example\x04test\x00", b"\xc0\x0c", b"\x00", b"\x3fabc"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda h, n, t, rest: h + n + t + rest, header, names, st.binary(min_size=0, max_size=4),
                           st.binary(max_size=40))))
def test_fuzz_query_never_raises(data):
    srv = _FUZZ
    for payload in (data, data[:2] + b"\x01\x00" + data[4:] if len(data) >= 4 else data):
        out = []
        before = srv.counters["drops"]
        srv.query(payload, out.append, transport=random.choice(["udp", "tcp"]))
        dropped = srv.counters["drops"] - before
        assert len(out) + dropped == 1  # answered (synchronously here: no upstream) or counted as dropped
        for o in out:
            rec = DNSRecord.parse(o)
            assert rec.header.qr == 1 and rec.header.id == int.from_bytes(payload[:2], "big")
        assert srv.counters.get("internal_error", 0) == 0


def test_tcp_idle_connections_are_closed(tmp_path):
    r = Running({"upstreams": [], "resolv_conf": str(tmp_path / "absent"), "tcp_idle": 0.2}, tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", r.tcp_port), timeout=2) as s:
            time.sleep(0.1)
            q = DNSRecord.question("host.gangway.internal").pack()
            s.sendall(struct.pack("!H", len(q)) + q)
            assert len(s.recv(4096)) > 2
            t0 = time.monotonic()
            assert s.recv(4096) == b""  # closed by the server when idle
            assert 0.1 < time.monotonic() - t0 < 1.0
    finally:
        r.stop()
