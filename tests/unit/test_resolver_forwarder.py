"""engine.resolver.forwarder (+ message, truncate): server choice, matching, failover, deadlines."""
import random

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord
from hypothesis import given, settings, strategies as st

from engine.resolver import message
from engine.resolver.forwarder import Done, Fail, Forwarder, Send, SendTcp, parse_hostport
from engine.resolver.truncate import fit

S1, S2, S3 = ("127.0.0.77", 53), ("127.0.0.78", 53), ("127.0.0.79", 5353)


def fwd(**kw):
    kw.setdefault("upstreams", ["127.0.0.77:53", "127.0.0.78"])
    kw.setdefault("rules", [{"domain": "corp.example", "upstreams": ["127.0.0.79:5353"]},
                            {"domain": "a.corp.example", "upstreams": ["127.0.0.78:53"]}])
    return Forwarder(rng=random.Random(1), **kw)


def answer_to(wire: bytes, ip="10.0.0.1", **flags) -> bytes:
    r = DNSRecord.parse(wire).reply()
    r.add_answer(RR(r.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
    for k, v in flags.items():
        setattr(r.header, k, v)
    return r.pack()


def test_parse_hostport():
    assert parse_hostport("127.0.0.77:53") == S1
    assert parse_hostport("127.0.0.78") == S2
    assert parse_hostport("[::1]:5353") == ("::1", 5353)
    assert parse_hostport("::1") == ("::1", 53)
    with pytest.raises(ValueError):
        parse_hostport("dns.example:53")


def test_rules_longest_suffix_wins():
    f = fwd()
    assert f.servers_for("www.example.test") == [S1, S2]
    assert f.servers_for("x.corp.example.") == [S3]
    assert f.servers_for("CORP.example") == [S3]
    assert f.servers_for("b.a.corp.example") == [S2]
    assert f.servers_for("notcorp.example") == [S1, S2]


def test_id_rewritten_and_answer_matched():
    f = fwd()
    q = DNSRecord.question("www.example.test")
    q.header.id = 4242
    q.add_ar(EDNS0(udp_len=4096))
    [send] = f.start("tok", q.pack(), 0.0)
    assert isinstance(send, Send) and send.server == S1
    assert send.wire[2:] == q.pack()[2:]  # EDNS0 and all passed through unchanged
    ans = answer_to(send.wire)
    assert f.on_answer(ans, S2, 0.1) == []  # wrong server
    assert f.on_answer(b"\xff\xff" + ans[2:], S1, 0.1) == []  # wrong id
    other = DNSRecord.question("evil.example.test")
    other.header.id = int.from_bytes(send.wire[:2], "big")
    assert f.on_answer(answer_to(other.pack()), S1, 0.1) == []  # wrong question
    assert f.on_answer(send.wire, S1, 0.1) == []  # a query, not an answer
    [done] = f.on_answer(ans, S1, 0.1)
    assert isinstance(done, Done) and done.token == "tok" and done.record.header.id == 4242
    assert done.wire[:2] == (4242).to_bytes(2, "big") and done.wire[2:] == ans[2:]
    assert not f.pending and f.counters["ignored_wrong_server"] == 1


def test_failover_after_try_timeout_then_servfail_within_bound():
    f = fwd(timeout=2.5, try_timeout=0.8)
    [s] = f.start(1, DNSRecord.question("www.example.test").pack(), 10.0)
    assert s.server == S1 and f.next_deadline() == pytest.approx(10.8)
    assert f.on_timer(10.5) == []
    [s2] = f.on_timer(10.8)
    assert s2.server == S2 and s2.wire == s.wire
    [s3] = f.on_timer(11.61)
    assert s3.server == S1  # cycles
    # a late answer from the first server is still accepted
    [done] = f.on_answer(answer_to(s.wire), S1, 11.7)
    assert isinstance(done, Done)
    [s] = f.start(2, DNSRecord.question("www.example.test").pack(), 20.0)
    assert s.server == S1 and f.servers_for("x.test", 20.0) == [S1, S2]  # S2 is down: tried last
    assert f.servers_for("x.test", 100.0) == [S1, S2]
    f.on_timer(20.81)
    f.on_timer(21.62)
    f.on_timer(22.43)
    assert f.next_deadline() == pytest.approx(22.5)
    [fail] = f.on_timer(22.5)
    assert fail == Fail(2, "timeout") and not f.pending


def test_servfail_moves_to_next_server_and_is_kept_as_fallback():
    f = fwd(timeout=2.0, try_timeout=0.5)
    [s] = f.start("t", DNSRecord.question("www.example.test").pack(), 0.0)
    bad = DNSRecord.parse(s.wire).reply()
    bad.header.rcode = RCODE.SERVFAIL
    [s2] = f.on_answer(bad.pack(), s.server, 0.1)
    assert s2.server == S2
    out = f.on_timer(0.6)
    out += f.on_timer(1.11) + f.on_timer(1.62) + f.on_timer(2.0)
    assert isinstance(out[-1], Done) and out[-1].record.header.rcode == RCODE.SERVFAIL


def test_tc_retries_over_tcp_same_server():
    f = fwd()
    [s] = f.start("t", DNSRecord.question("big.example.test", "TXT").pack(), 0.0)
    tc = DNSRecord.parse(s.wire).reply()
    tc.header.tc = 1
    [t] = f.on_answer(tc.pack(), S1, 0.1)
    assert isinstance(t, SendTcp) and t.server == S1 and t.wire == s.wire
    assert f.on_timer(1.0) == []  # no UDP failover while TCP is in flight
    full = DNSRecord.parse(s.wire).reply()
    for i in range(12):
        full.add_answer(RR("big.example.test", QTYPE.TXT, rdata=TXT("x" * 250)))
    [done] = f.on_answer(full.pack(), S1, 0.2, tcp=True)
    assert len(done.record.rr) == 12
    # TCP failure moves on to the next server over UDP
    [s] = f.start("u", DNSRecord.question("big.example.test", "TXT").pack(), 5.0)
    [t] = f.on_answer(s.wire[:2] + tc.pack()[2:], S1, 5.1)
    [s2] = f.on_tcp_failed(t.qid, S1, 5.2)
    assert isinstance(s2, Send) and s2.server == S2


def test_no_upstream_and_busy():
    f = Forwarder(upstreams=[], max_pending=1)
    assert f.start(1, DNSRecord.question("x.test").pack(), 0.0) == [Fail(1, "no_upstream")]
    f.upstreams = [S1]
    f.start(1, DNSRecord.question("x.test").pack(), 0.0)
    assert f.start(2, DNSRecord.question("y.test").pack(), 0.0) == [Fail(2, "busy")]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_on_answer_never_raises(data):
    f = fwd()
    [s] = f.start("t", DNSRecord.question("www.example.test").pack(), 0.0)
    f.on_answer(data, S1, 0.0)
    f.on_answer(s.wire[:2] + data, S1, 0.0)


def test_parse_query_classifies():
    assert message.parse_query(b"\x00" * 5).drop == "short"
    q = DNSRecord.question("x.test").pack()
    assert message.parse_query(q).request is not None
    resp = bytearray(q)
    resp[2] |= 0x80
    assert message.parse_query(bytes(resp)).drop == "not_a_query"
    err = message.parse_query(q[:-3]).error
    assert err[:2] == q[:2] and err[3] & 0xF == RCODE.FORMERR and err[2] & 0x80
    upd = bytearray(q)
    upd[2] |= 5 << 3  # opcode UPDATE
    assert message.parse_query(bytes(upd)).error[3] & 0xF == RCODE.NOTIMP
    two = bytearray(q)
    two[5] = 2
    assert message.parse_query(bytes(two)).error[3] & 0xF == RCODE.FORMERR


def test_udp_limit_and_truncation():
    q = DNSRecord.question("big.example.test", "TXT")
    assert message.udp_limit(q) == 512
    q.add_ar(EDNS0(udp_len=4096))
    assert message.udp_limit(q, 1232) == 1232
    assert message.udp_limit(q) == 4096
    r = q.reply()
    for i in range(12):
        r.add_answer(RR("big.example.test", QTYPE.TXT, rdata=TXT("x" * 250)))
    r.add_ar(EDNS0(udp_len=1232))
    data, tc = fit(r, None, 1232)
    out = DNSRecord.parse(data)
    assert tc and out.header.tc and not out.rr and out.q.qname == q.q.qname and out.ar[0].rtype == QTYPE.OPT
    data, tc = fit(r, None, 65535)
    assert not tc and len(DNSRecord.parse(data).rr) == 12


def test_silent_server_is_tried_last():
    f = fwd(timeout=2.5, try_timeout=0.5)
    [s] = f.start(1, DNSRecord.question("www.example.test").pack(), 0.0)
    [s2] = f.on_timer(0.5)
    [done] = f.on_answer(answer_to(s2.wire), S2, 0.6)
    [s] = f.start(2, DNSRecord.question("www.example.test").pack(), 1.0)
    assert s.server == S2
    assert f.servers_for("www.example.test", 31.0) == [S1, S2]  # hold-down over


def test_port_unreachable_fails_over_at_once_then_fails_when_all_refused():
    f = fwd(upstreams=["127.0.0.77:53", "127.0.0.78"], rules=[])
    q = DNSRecord.question("www.example.test").pack()
    [send] = f.start("tok", q, 0.0)
    assert send.server == S1
    qid = int.from_bytes(send.wire[:2], "big")
    # ICMP port unreachable from S1, long before try_timeout: straight on to S2
    [send2] = f.on_refused(qid, S1, 0.01)
    assert isinstance(send2, Send) and send2.server == S2
    assert f.on_refused(qid, S1, 0.02) == []  # a repeat of the same error changes nothing
    assert f.on_refused(qid ^ 1, S2, 0.02) == []  # another query's socket
    # S2 refuses too: every server refused, so the client hears SERVFAIL now, not at timeout
    [fail] = f.on_refused(qid, S2, 0.03)
    assert isinstance(fail, Fail) and fail.token == "tok"
    assert f.pending == {} and f.counters["port_unreachable"] == 2 and f.counters["fail_refused"] == 1
    # both are down now: tried last by the next query
    assert f.down[S1] > 0.03 and f.down[S2] > 0.03


def test_port_unreachable_skips_refused_servers_on_timeout():
    f = fwd(upstreams=["127.0.0.77:53", "127.0.0.78", "127.0.0.79:5353"], rules=[], try_timeout=0.5, timeout=5)
    q = DNSRecord.question("www.example.test").pack()
    [s1] = f.start("tok", q, 0.0)
    qid = int.from_bytes(s1.wire[:2], "big")
    [s2] = f.on_refused(qid, s1.server, 0.01)
    # s2 stays silent: the timer moves to the third server, then skips the refused first one
    [s3] = f.on_timer(0.6)
    assert s3.server not in (s1.server, s2.server)
    [s4] = f.on_timer(1.2)
    assert s4.server == s2.server
    ans = answer_to(s4.wire)
    [done] = f.on_answer(ans, s2.server, 1.3)
    assert isinstance(done, Done)


def test_late_refusal_of_an_abandoned_try_does_not_skip_the_current_one():
    f = fwd(upstreams=["127.0.0.77:53", "127.0.0.78"], rules=[], try_timeout=0.5, timeout=5)
    q = DNSRecord.question("www.example.test").pack()
    [s1] = f.start("tok", q, 0.0)
    [s2] = f.on_timer(0.6)
    assert f.on_refused(int.from_bytes(s1.wire[:2], "big"), s1.server, 0.7) == []  # S1's error arrives after we moved on
    [done] = f.on_answer(answer_to(s2.wire), s2.server, 0.8)
    assert isinstance(done, Done)
