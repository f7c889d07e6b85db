"""DNS engine: local zone answers, cache TTLs and negative caching, forwarder state machine,
and the query path under fuzzing (parses and answers, or FORMERR, or counted drop)."""
import random
import socket
import struct
import threading

import pytest
from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord
from hypothesis import given, settings, strategies as st

from bus.loop import Loop
from engine.dns.cache import AnswerCache
from engine.dns.forwarder import Forwarder
from engine.dns.zone import LocalZone
from services.dnsserver import DnsServer
from tests.dnsupstream import Upstream


def zone():
    z = LocalZone(domain="gangway.internal", gateway="192.168.65.1", host_alias="192.168.65.254",
                  subnet="192.168.65.0/24", aliases=["host.docker.internal", "gateway.docker.internal"])
    z.add("web.gangway.internal", "A", "192.168.65.3", source="guest")
    z.add("alias.gangway.internal", "CNAME", "web.gangway.internal")
    z.add("ext.gangway.internal", "CNAME", "www.example.test")
    return z


def test_zone_answers_nodata_nxdomain_ptr_cname():
    z = zone()
    rcode, ans, _ = z.answer("host.gangway.internal.", QTYPE.A)
    assert rcode == RCODE.NOERROR and str(ans[0].rdata) == "192.168.65.254"
    assert str(z.answer("gateway.docker.internal", QTYPE.A)[1][0].rdata) == "192.168.65.1"
    rcode, ans, auth = z.answer("web.gangway.internal", QTYPE.AAAA)
    assert rcode == RCODE.NOERROR and ans == [] and auth[0].rtype == QTYPE.SOA
    assert z.answer("nope.gangway.internal", QTYPE.A)[0] == RCODE.NXDOMAIN
    assert z.answer("www.example.test", QTYPE.A) is None
    rcode, ans, _ = z.answer("3.65.168.192.in-addr.arpa", QTYPE.PTR)
    assert str(ans[0].rdata) == "web.gangway.internal."
    assert z.answer("77.65.168.192.in-addr.arpa", QTYPE.PTR)[0] == RCODE.NXDOMAIN
    assert z.answer("8.8.8.8.in-addr.arpa", QTYPE.PTR) is None
    rcode, ans, _ = z.answer("alias.gangway.internal", QTYPE.A)
    assert [a.rtype for a in ans] == [QTYPE.CNAME, QTYPE.A]
    rcode, ans, _ = z.answer("ext.gangway.internal", QTYPE.A)
    assert [a.rtype for a in ans] == [QTYPE.CNAME]


def test_zone_rejects_bad_values():
    z = zone()
    for rtype, value in (("A", "300.1.1.1"), ("MX", "mail"), ("SRV", "1 2 x y"), ("BOGUS", "1")):
        with pytest.raises(ValueError):
            z.add("x.gangway.internal", rtype, value)


def test_cache_counts_down_and_negative_caching():
    c = AnswerCache(size=2)
    q = DNSRecord.question("a.example.test")
    r = q.reply()
    r.add_answer(RR("a.example.test", QTYPE.A, rdata=A("10.0.0.1"), ttl=100))
    c.put(r, 1000.0)
    assert c.get(q, 1030.0).rr[0].ttl == 70
    assert c.get(q, 1101.0) is None
    neg = DNSRecord.question("b.example.test").reply()
    neg.header.rcode = RCODE.NXDOMAIN
    neg.add_auth(RR("example.test", QTYPE.SOA, rdata=SOA("ns", "h", (1, 2, 3, 4, 30)), ttl=300))
    c.put(neg, 0.0)
    assert c.get(DNSRecord.question("b.example.test"), 29.0).header.rcode == RCODE.NXDOMAIN
    assert c.get(DNSRecord.question("b.example.test"), 31.0) is None
    for i in range(5):
        rr = DNSRecord.question(f"n{i}.test").reply()
        rr.add_answer(RR(f"n{i}.test", QTYPE.A, rdata=A("10.0.0.2"), ttl=100))
        c.put(rr, 0.0)
    assert len(c) == 2


def test_forwarder_rules_failover_and_timeout():
    f = Forwarder(upstreams=["127.0.0.77:53", "127.0.0.78:53"], rules=[{"domain": "corp.example", "upstreams": ["127.0.0.79:53"]}],
                  timeout=2.5, try_timeout=0.8, rng=random.Random(1))
    q = DNSRecord.question("www.corp.example")
    [(kind, server, wire)] = f.start("t1", q, 0.0)
    assert kind == "send" and server == ("127.0.0.79", 53)
    q2 = DNSRecord.question("www.example.test")
    [(_, server, wire)] = f.start("t2", q2, 0.0)
    assert server == ("127.0.0.77", 53)
    # a spoofed answer from another address or with another question is ignored
    ans = DNSRecord.parse(wire).reply()
    assert f.on_answer(ans.pack(), ("127.0.0.1", 53), 0.1) == []
    acts = f.on_timer(0.9)
    assert ("send", ("127.0.0.78", 53)) in [(a[0], a[1]) for a in acts]
    acts = f.on_timer(2.6)
    assert sorted(a[0] for a in acts) == ["fail", "fail"]
    assert f.pending == {}


def test_forwarder_matches_answer_and_restores_id():
    f = Forwarder(upstreams=["127.0.0.77:53"], rng=random.Random(2))
    q = DNSRecord.question("www.example.test")
    q.header.id = 4242
    [(_, server, wire)] = f.start("tok", q, 0.0)
    ans = DNSRecord.parse(wire).reply()
    ans.add_answer(RR("www.example.test", QTYPE.A, rdata=A("10.1.1.1"), ttl=60))
    [(kind, tok, rec)] = f.on_answer(ans.pack(), server, 0.1)
    assert kind == "done" and tok == "tok" and rec.header.id == 4242


class Log:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.fixture
def server(tmp_path):
    up = Upstream("127.0.0.77", "u1", ttl=120)
    loop = Loop()
    srv = DnsServer(loop, {"mode": "upstream", "upstreams": [up.hostport], "records": []}, gateway="192.168.65.1",
                    host_alias="192.168.65.254", subnet="192.168.65.0/24", state_dir=tmp_path, log=Log())
    yield loop, srv, up
    srv.close()
    up.stop()


def ask(loop, srv, payload: bytes, transport="udp", steps=200):
    out = []
    srv.query(payload, out.append, transport=transport)
    for _ in range(steps):
        if out:
            break
        loop.run_once(max_wait=0.02)
    return out


def test_server_forwards_truncates_and_persists(server, tmp_path):
    loop, srv, up = server
    [data] = ask(loop, srv, DNSRecord.question("www.example.test", "TXT").pack())
    assert DNSRecord.parse(data).rr[0].rdata.data == [b"served-by=u1"]
    [data] = ask(loop, srv, DNSRecord.question("big.example.test", "TXT").pack())
    assert DNSRecord.parse(data).header.tc == 1
    [data] = ask(loop, srv, DNSRecord.question("big.example.test", "TXT").pack(), transport="tcp")
    assert len(DNSRecord.parse(data).rr) == 12
    srv.add_record("api.gangway.internal", "A", "192.168.65.77")
    srv2 = DnsServer(Loop(), {"records": []}, gateway="192.168.65.1", host_alias="192.168.65.254",
                     subnet="192.168.65.0/24", state_dir=tmp_path, log=Log())
    assert any(r["name"] == "api.gangway.internal" for r in srv2.list_records())
    srv2.close()


def test_host_mode_uses_injected_resolver(tmp_path):
    calls = []

    def fake(name, port, family, *a):
        calls.append(name)
        if name == "known.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.5.5.5", 0))]
        raise socket.gaierror(socket.EAI_NONAME, "not known")

    loop = Loop()
    srv = DnsServer(loop, {"mode": "host"}, gateway="192.168.65.1", host_alias="192.168.65.254",
                    subnet="192.168.65.0/24", state_dir=tmp_path, log=Log(), resolve=fake)
    [data] = ask(loop, srv, DNSRecord.question("known.test").pack())
    assert str(DNSRecord.parse(data).rr[0].rdata) == "10.5.5.5"
    [data] = ask(loop, srv, DNSRecord.question("unknown.test").pack())
    assert DNSRecord.parse(data).header.rcode == RCODE.NXDOMAIN
    srv.close()


def test_resolv_conf_is_reread(tmp_path):
    a, b = Upstream("127.0.0.77", "ra"), Upstream("127.0.0.78", "rb")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver 127.0.0.77\n")
    loop = Loop()
    srv = DnsServer(loop, {"mode": "upstream", "upstreams": [], "resolv_conf": str(resolv)}, gateway="192.168.65.1",
                    host_alias="192.168.65.254", subnet="192.168.65.0/24", state_dir=tmp_path, log=Log())
    try:
        assert srv.fwd.upstreams == [("127.0.0.77", 53)]
        import os
        import time
        resolv.write_text("nameserver 127.0.0.78\n")
        os.utime(resolv, (time.time() + 5, time.time() + 5))
        srv._resolv_checked = -1e9
        srv._refresh_upstreams()
        assert srv.fwd.upstreams == [("127.0.0.78", 53)]
    finally:
        srv.close()
        a.stop()
        b.stop()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_query_path_never_raises(data):
    loop = Loop()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        srv = DnsServer(loop, {"mode": "upstream", "upstreams": ["127.0.0.79:9"], "timeout": 0.05, "try_timeout": 0.05},
                        gateway="192.168.65.1", host_alias="192.168.65.254", subnet="192.168.65.0/24", state_dir=d, log=Log())
        out = []
        srv.query(data, out.append)
        srv.query(data[:2] + b"\x01\x00" + data[4:], out.append)  # as a query
        for o in out:
            DNSRecord.parse(o)  # whatever we sent back is well-formed
        srv.close()
