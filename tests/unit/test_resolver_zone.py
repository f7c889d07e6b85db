"""engine.resolver.zone: local names, PTR, NODATA vs NXDOMAIN, CNAME chains, validation."""
import pytest
from dnslib import QTYPE, RCODE

from engine.resolver.zone import LocalZone, check_hostname, make_rdata, reverse_to_ip

ALIASES = ["host.docker.internal", "gateway.docker.internal", "host.containers.internal"]


@pytest.fixture
def zone():
    z = LocalZone(domain="gangway.internal", gateway="192.168.65.1", host_alias="192.168.65.254",
                  subnet="192.168.65.0/24", aliases=ALIASES, ttl=60)
    z.add("vm1.gangway.internal", "A", "192.168.65.2", source="guest")
    return z


def rdatas(ans):
    return [str(rr.rdata) for rr in ans.answers]


@pytest.mark.parametrize("name,ip", [
    ("host.gangway.internal", "192.168.65.254"), ("gateway.gangway.internal", "192.168.65.1"),
    ("host.docker.internal", "192.168.65.254"), ("host.containers.internal", "192.168.65.254"),
    ("gateway.docker.internal", "192.168.65.1"), ("VM1.Gangway.Internal.", "192.168.65.2"),
])
def test_builtin_alias_and_guest_names(zone, name, ip):
    ans = zone.answer(name, QTYPE.A)
    assert ans.rcode == RCODE.NOERROR and rdatas(ans) == [ip] and ans.answers[0].ttl == 60


@pytest.mark.parametrize("ip,name", [
    ("192.168.65.254", "host.gangway.internal."), ("192.168.65.1", "gateway.gangway.internal."),
    ("192.168.65.2", "vm1.gangway.internal."),
])
def test_ptr(zone, ip, name):
    rev = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    ans = zone.answer(rev, QTYPE.PTR)
    assert ans.rcode == RCODE.NOERROR and rdatas(ans) == [name]


def test_unknown_address_in_subnet_is_nxdomain_outside_is_forwarded(zone):
    ans = zone.answer("77.65.168.192.in-addr.arpa", QTYPE.PTR)
    assert ans.rcode == RCODE.NXDOMAIN and ans.authority[0].rtype == QTYPE.SOA
    assert str(ans.authority[0].rname) == "65.168.192.in-addr.arpa."
    assert zone.answer("8.8.8.8.in-addr.arpa", QTYPE.PTR) is None


def test_nodata_vs_nxdomain(zone):
    nodata = zone.answer("host.gangway.internal", QTYPE.AAAA)
    assert nodata.rcode == RCODE.NOERROR and not nodata.answers
    assert [rr.rtype for rr in nodata.authority] == [QTYPE.SOA]
    assert nodata.authority[0].rdata.times[-1] == 60
    nx = zone.answer("nope.gangway.internal", QTYPE.A)
    assert nx.rcode == RCODE.NXDOMAIN and nx.authority[0].rtype == QTYPE.SOA
    assert zone.answer("host.docker.internal", QTYPE.TXT).rcode == RCODE.NOERROR  # alias: NODATA
    assert zone.answer("other.docker.internal", QTYPE.A) is None  # not ours: forwarded
    assert zone.answer("www.example.com", QTYPE.A) is None


def test_empty_non_terminal_is_nodata(zone):
    zone.add("a.b.gangway.internal", "A", "192.168.65.9", source="static")
    ans = zone.answer("b.gangway.internal", QTYPE.A)
    assert ans.rcode == RCODE.NOERROR and not ans.answers
    apex = zone.answer("gangway.internal", QTYPE.SOA)
    assert apex.answers[0].rtype == QTYPE.SOA


def test_static_types_and_ptr_override(zone):
    zone.add("svc.gangway.internal", "SRV", "0 5 8080 host.gangway.internal", source="static")
    zone.add("mail.test", "MX", "10 mx.test", source="static")
    zone.add("txt.gangway.internal", "TXT", "hello world", ttl=5, source="runtime")
    zone.add("v6.gangway.internal", "AAAA", "fd00::5", source="runtime")
    zone.add("9.65.168.192.in-addr.arpa", "PTR", "nine.test", source="static")
    assert rdatas(zone.answer("svc.gangway.internal", QTYPE.SRV)) == ["0 5 8080 host.gangway.internal."]
    assert rdatas(zone.answer("mail.test", QTYPE.MX)) == ["10 mx.test."]
    ans = zone.answer("txt.gangway.internal", QTYPE.TXT)
    assert ans.answers[0].rdata.data == [b"hello world"] and ans.answers[0].ttl == 5
    assert rdatas(zone.answer("9.65.168.192.in-addr.arpa", QTYPE.PTR)) == ["nine.test."]
    v6rev = "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"
    assert rdatas(zone.answer(v6rev, QTYPE.PTR)) == ["v6.gangway.internal."]
    assert len(zone.answer("host.gangway.internal", QTYPE.ANY).answers) == 1


def test_cname_chain_followed_and_chase(zone):
    zone.add("a.gangway.internal", "CNAME", "b.gangway.internal", source="static")
    zone.add("b.gangway.internal", "CNAME", "host.gangway.internal", source="static")
    ans = zone.answer("a.gangway.internal", QTYPE.A)
    assert [rr.rtype for rr in ans.answers] == [QTYPE.CNAME, QTYPE.CNAME, QTYPE.A]
    assert rdatas(ans)[-1] == "192.168.65.254"
    assert zone.answer("a.gangway.internal", QTYPE.CNAME).answers[0].rdata.label == "b.gangway.internal."
    nodata = zone.answer("a.gangway.internal", QTYPE.AAAA)
    assert nodata.rcode == RCODE.NOERROR and len(nodata.answers) == 2 and nodata.authority
    zone.add("ext.gangway.internal", "CNAME", "www.example.test", source="runtime")
    ext = zone.answer("ext.gangway.internal", QTYPE.A)
    assert ext.chase == "www.example.test" and len(ext.answers) == 1
    zone.add("dang.gangway.internal", "CNAME", "missing.gangway.internal", source="runtime")
    assert zone.answer("dang.gangway.internal", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_cname_loop_stops(zone):
    zone.add("x.gangway.internal", "CNAME", "y.gangway.internal", source="static")
    zone.add("y.gangway.internal", "CNAME", "x.gangway.internal", source="static")
    ans = zone.answer("x.gangway.internal", QTYPE.A)
    assert ans.rcode == RCODE.NOERROR and len(ans.answers) == 2


def test_bad_input_is_rejected_clearly(zone):
    with pytest.raises(ValueError, match="not supported"):
        zone.add("x.gangway.internal", "CAA", "0 issue x")
    with pytest.raises(ValueError, match="bad A value"):
        zone.add("x.gangway.internal", "A", "300.1.1.1")
    with pytest.raises(ValueError, match="bad label"):
        zone.add("bad name.gangway.internal", "A", "192.168.65.3")
    with pytest.raises(ValueError, match="built-in"):
        zone.add("host.gangway.internal", "A", "192.168.65.3")
    zone.add("c.gangway.internal", "CNAME", "host.gangway.internal")
    with pytest.raises(ValueError, match="CNAME"):
        zone.add("c.gangway.internal", "A", "192.168.65.3")
    with pytest.raises(ValueError, match="CNAME"):
        zone.add("vm1.gangway.internal", "CNAME", "host.gangway.internal")
    with pytest.raises(ValueError, match="ttl"):
        zone.add("t.gangway.internal", "A", "192.168.65.3", ttl=-1)
    with pytest.raises(ValueError, match="bad MX"):
        make_rdata("MX", "mail.test")


def test_remove_by_name_type_value(zone):
    zone.add("m.gangway.internal", "A", "192.168.65.10")
    zone.add("m.gangway.internal", "A", "192.168.65.11")
    zone.add("m.gangway.internal", "TXT", "t")
    assert zone.remove("m.gangway.internal", "A", "192.168.065.10".replace("065", "65"), source="runtime") == 1
    assert zone.remove("m.gangway.internal", source="runtime") == 2
    assert zone.answer("m.gangway.internal", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_helpers():
    assert check_hostname("My-VM.localdomain") == "my-vm"
    with pytest.raises(ValueError):
        check_hostname("bad_name!")
    assert str(reverse_to_ip("1.65.168.192.in-addr.arpa")) == "192.168.65.1"
    assert reverse_to_ip("65.168.192.in-addr.arpa") is None
