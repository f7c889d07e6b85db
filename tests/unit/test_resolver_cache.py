"""engine.resolver.cache: TTL countdown, RFC 2308 negative caching, LRU bound."""
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord

from engine.resolver.cache import Cache, cache_ttl


def answer(name="www.example.test", ttl=300, rcode=RCODE.NOERROR, soa=None, qtype="A"):
    r = DNSRecord.question(name, qtype).reply()
    r.header.rcode = rcode
    if rcode == RCODE.NOERROR and soa is None:
        r.add_answer(RR(name, QTYPE.A, rdata=A("10.0.0.1"), ttl=ttl))
    if soa is not None:
        soa_ttl, minimum = soa
        r.add_auth(RR("example.test", QTYPE.SOA, rdata=SOA("ns.example.test", "h.example.test",
                                                             (1, 2, 3, 4, minimum)), ttl=soa_ttl))
    return r


KEY = ("www.example.test", QTYPE.A, 1)


def test_ttl_counts_down_and_expires():
    c = Cache(10)
    assert c.put(answer(ttl=100), now=1000.0)
    assert c.get(KEY, 1000.0).rr[0].ttl == 100
    assert c.get(KEY, 1030.5).rr[0].ttl == 70
    assert c.get(KEY, 1099.9).rr[0].ttl == 1
    assert c.get(KEY, 1100.0) is None
    assert c.stats["expired"] == 1


def test_negative_caching_uses_soa_minimum():
    c = Cache(10)
    nx = answer("nx.example.test", rcode=RCODE.NXDOMAIN, soa=(3600, 30))
    assert cache_ttl(nx) == 30
    assert cache_ttl(answer("nx.example.test", rcode=RCODE.NXDOMAIN, soa=(10, 300))) == 10  # min(TTL, MINIMUM)
    c.put(nx, 0.0)
    hit = c.get(("nx.example.test", QTYPE.A, 1), 29.0)
    assert hit.header.rcode == RCODE.NXDOMAIN and hit.auth[0].ttl == 3600 - 29
    assert c.get(("nx.example.test", QTYPE.A, 1), 30.0) is None
    nodata = answer("nd.example.test", soa=(60, 60), qtype="AAAA")
    assert cache_ttl(nodata) == 60 and not nodata.rr


def test_not_cached():
    assert cache_ttl(answer(rcode=RCODE.NXDOMAIN)) == 0  # no SOA
    assert cache_ttl(answer(rcode=RCODE.SERVFAIL)) == 0
    assert cache_ttl(answer(ttl=0)) == 0
    tc = answer()
    tc.header.tc = 1
    assert cache_ttl(tc) == 0
    assert cache_ttl(answer(ttl=10**6)) == 86400


def test_negative_ttl_for_soa_less_answers_of_our_own():
    assert cache_ttl(answer(rcode=RCODE.NXDOMAIN), negative_ttl=30) == 30
    assert cache_ttl(answer(rcode=RCODE.NXDOMAIN), negative_ttl=10**6) == 3600  # max_neg
    assert cache_ttl(answer(rcode=RCODE.SERVFAIL), negative_ttl=30) == 0  # never a failure
    assert cache_ttl(answer(ttl=120), negative_ttl=30) == 120  # positive answers keep their TTL


def test_lru_bound():
    c = Cache(3)
    for i in range(3):
        c.put(answer(f"n{i}.test"), 0.0)
    assert c.get(("n0.test", QTYPE.A, 1), 1.0) is not None  # n0 becomes youngest
    c.put(answer("n3.test"), 1.0)
    assert len(c) == 3 and c.stats["evicted"] == 1
    assert c.get(("n1.test", QTYPE.A, 1), 1.0) is None
    assert c.get(("n0.test", QTYPE.A, 1), 1.0) is not None


def test_opt_not_stored_and_key_is_case_insensitive():
    r = answer("WWW.Example.Test")
    r.add_ar(EDNS0(udp_len=4096))
    c = Cache(5)
    c.put(r, 0.0)
    hit = c.get(KEY, 0.0)
    assert hit is not None and not hit.ar
    c.clear("www.example.test")
    assert c.get(KEY, 0.0) is None
