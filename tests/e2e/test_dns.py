"""DNS end to end: `dig` in a namespace guest against gangway's DNS on the gateway address.

Forwarding goes only to test upstream servers this file runs on loopback addresses
(127.0.0.77/78); the machine's own resolver is never used.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.dnsupstream import Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed")]


@pytest.fixture
def upstreams():
    a, b = Upstream("127.0.0.77", "up1", ttl=300), Upstream("127.0.0.78", "up2", ttl=300)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def dns_lan(make_stack, make_guest, upstreams, tmp_path):
    a, b = upstreams
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search corp.example\nnameserver 127.0.0.1\n")  # only read for the search list
    guest = make_guest()
    stack = make_stack({"dns": {"mode": "upstream", "upstreams": [a.hostport], "resolv_conf": str(resolv),
                                "rule": [{"domain": "corp.example", "upstreams": [b.hostport]}],
                                "records": [{"name": "db.gangway.internal", "type": "A", "value": "192.168.65.9"},
                                            {"name": "svc.gangway.internal", "type": "SRV", "value": "0 5 8080 db.gangway.internal"}]}})
    stack.up(netns=[guest.name])
    guest.wait_link()
    guest.run("hostname")  # namespaces share the UTS name; udhcpc sends -x hostname:NAME below
    r = guest.run("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "1", "-x", "hostname:webguest",
                  "-s", "tests/udhcpc.script", timeout=30)
    assert r.returncode == 0, r.stderr
    guest.ip = guest.addr()
    lease = Path(f"/tmp/udhcpc-lease-{guest.name}")
    guest.lease = dict(line.split("=", 1) for line in lease.read_text().splitlines() if "=" in line)
    lease.unlink()
    return stack, guest, a, b


def dig(guest, *args, server="192.168.65.1"):
    r = guest.run("dig", f"@{server}", "+time=3", "+tries=1", *args, timeout=20)
    return r.stdout


def short(guest, *args):
    return dig(guest, "+short", *args).split()


def status(out: str) -> str:
    for line in out.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "?"


def test_local_names_ptr_nodata_nxdomain(dns_lan):
    stack, guest, _, _ = dns_lan
    # DHCP's search list: the configured domain, then the host's own search list
    assert guest.lease["search"].split() == ["gangway.internal", "corp.example"]
    assert short(guest, "host.gangway.internal") == ["192.168.65.254"]
    assert short(guest, "gateway.gangway.internal") == ["192.168.65.1"]
    for alias in ("host.docker.internal", "host.containers.internal"):
        assert short(guest, alias) == ["192.168.65.254"]
    assert short(guest, "gateway.docker.internal") == ["192.168.65.1"]
    assert short(guest, "db.gangway.internal") == ["192.168.65.9"]
    assert "8080" in short(guest, "svc.gangway.internal", "SRV")
    # the guest by the hostname it gave DHCP, and the reverse
    assert short(guest, "webguest.gangway.internal") == [guest.ip]
    assert short(guest, "-x", guest.ip) == ["webguest.gangway.internal."]
    assert short(guest, "-x", "192.168.65.254") == ["host.gangway.internal."]
    # the bare name through the search domain handed out by DHCP
    r = guest.run("dig", "+search", "+short", "webguest", timeout=20)
    assert r.stdout.split() == [guest.ip]
    out = dig(guest, "host.gangway.internal", "AAAA")
    assert status(out) == "NOERROR" and "ANSWER: 0" in out and "SOA" in out
    assert status(dig(guest, "nosuch.gangway.internal")) == "NXDOMAIN"


def test_runtime_records_survive_dns_restart(dns_lan):
    stack, guest, _, _ = dns_lan
    stack.gangway("dns", "add", "api.gangway.internal", "A", "192.168.65.77")
    stack.gangway("dns", "add", "api.gangway.internal", "TXT", "hello world")
    assert short(guest, "api.gangway.internal") == ["192.168.65.77"]
    old = stack.kill9("dns")
    stack.wait_restarted("dns", old)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and short(guest, "api.gangway.internal") != ["192.168.65.77"]:
        time.sleep(0.3)
    assert short(guest, "api.gangway.internal") == ["192.168.65.77"]
    assert '"hello world"' in dig(guest, "+short", "api.gangway.internal", "TXT")
    listed = stack.gangway("dns", "list").stdout
    assert "api.gangway.internal" in listed
    stack.gangway("dns", "rm", "api.gangway.internal")
    assert status(dig(guest, "api.gangway.internal")) == "NXDOMAIN"


def test_forwarding_types_rules_and_cache(dns_lan):
    stack, guest, up1, up2 = dns_lan
    for rtype in ("TXT", "MX", "SRV", "CAA", "AAAA"):
        assert short(guest, "www.example.test", rtype), rtype
    assert short(guest, "www.example.test", "TXT") == ['"served-by=up1"']
    # the per-domain rule sends corp.example to the second server
    assert short(guest, "www.corp.example", "TXT") == ['"served-by=up2"']
    assert up2.resolver.count("www.corp.example") >= 1 and up1.resolver.count("www.corp.example") == 0
    # cached: the upstream is asked once, and the TTL counts down
    first = dig(guest, "+noall", "+answer", "www.example.test", "A").split()
    time.sleep(2.2)
    second = dig(guest, "+noall", "+answer", "www.example.test", "A").split()
    # five types, then A: six upstream questions; the repeated TXT and A came from the cache
    assert up1.resolver.count("www.example.test") == 6
    assert int(second[1]) <= int(first[1]) - 2
    assert status(dig(guest, "nope.example.test")) == "NXDOMAIN"


def test_large_answer_truncated_then_tcp(dns_lan):
    stack, guest, _, _ = dns_lan
    out = dig(guest, "+ignore", "+noedns", "big.example.test", "TXT")
    assert " tc" in out.split("flags:")[1].split(";")[0]
    out = dig(guest, "big.example.test", "TXT")  # dig retries over TCP itself
    assert status(out) == "NOERROR" and out.count("TXT") >= 12


def test_dead_upstream_servfail_quickly(make_stack, make_guest):
    guest = make_guest()
    stack = make_stack({"dns": {"mode": "upstream", "upstreams": ["127.0.0.79:9"]}})
    stack.up(netns=[guest.name])
    guest.wait_link()
    guest.dhcp()
    start = time.monotonic()
    out = dig(guest, "www.example.test")
    assert status(out) == "SERVFAIL"
    assert time.monotonic() - start < 5
    # nothing listens there: the kernel's port unreachable ends the query, not the timeout
    c = stack.stats("dns")
    assert c.get("dns.upstream.port_unreachable", 0) >= 1 and c.get("dns.upstream.fail_refused", 0) >= 1, c
    assert c.get("dns.upstream.fail_timeout", 0) == 0, c


def test_closed_upstream_port_fails_over_to_the_next_at_once(make_stack, make_guest, upstreams):
    up1, _ = upstreams
    guest = make_guest()
    stack = make_stack({"dns": {"mode": "upstream", "upstreams": ["127.0.0.79:9", up1.hostport]}})
    stack.up(netns=[guest.name])
    guest.wait_link()
    guest.dhcp()
    assert short(guest, "www.example.test", "TXT") == ['"served-by=up1"']
    c = stack.stats("dns")
    assert c.get("dns.upstream.port_unreachable", 0) == 1, c
    assert c.get("dns.upstream.try_timeout", 0) == 0, c  # moved on at the ICMP error, not the timer
