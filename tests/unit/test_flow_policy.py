"""Address mapping and allow/deny policy (engine/flow/policy.py)."""
from __future__ import annotations

import socket

import pytest

from engine.flow.policy import Policy, PolicyError, Reject, Target, default_map, parse_map
from gangway import config as configmod


def ip(text: str) -> bytes:
    return socket.inet_aton(text)


def make(**kw) -> Policy:
    cfg = configmod.load()
    cfg["flow"].update(kw)
    return Policy.from_config(cfg, "/run/gw")


def test_host_alias_maps_to_loopback_all_protocols():
    p = make()
    assert p.decide("tcp", ip("192.168.65.254"), 8080) == Target(socket.AF_INET, ("127.0.0.1", 8080))
    assert p.decide("udp", ip("192.168.65.254"), 53) == Target(socket.AF_INET, ("127.0.0.1", 53))
    assert p.decide("icmp", ip("192.168.65.254"), None) == Target(socket.AF_INET, ("127.0.0.1", 0))


def test_gateway_dns_tcp_goes_to_the_dns_unix_socket_by_default_other_ports_closed():
    p = make()
    assert p.decide("tcp", ip("192.168.65.1"), 53) == Target(socket.AF_UNIX, "/run/gw/dns-tcp.sock")
    assert p.decide("tcp", ip("192.168.65.1"), 22) == Reject("closed")
    assert p.decide("udp", ip("192.168.65.1"), 53) == Reject("closed")  # UDP DNS is the switch's
    assert not p.decide("tcp", ip("192.168.65.1"), 22).admin


def test_user_map_entries_add_replace_and_remove():
    p = make(map=[{"from": "192.168.65.1:3128", "proto": "tcp", "to": "127.0.0.1:3129"},
                  {"from": "192.168.65.1:53", "to": "none"},
                  {"from": "192.168.65.254:80", "proto": "tcp", "to": "unix:/tmp/web.sock"},
                  {"from": "192.168.65.1:5353", "proto": "udp", "to": "127.0.0.1:5353"}])
    assert p.decide("tcp", ip("192.168.65.1"), 3128) == Target(socket.AF_INET, ("127.0.0.1", 3129))
    assert p.decide("tcp", ip("192.168.65.1"), 53) == Reject("closed")
    assert p.decide("tcp", ip("192.168.65.254"), 80) == Target(socket.AF_UNIX, "/tmp/web.sock")
    assert p.decide("tcp", ip("192.168.65.254"), 81) == Target(socket.AF_INET, ("127.0.0.1", 81))
    assert p.decide("udp", ip("192.168.65.1"), 5353) == Target(socket.AF_INET, ("127.0.0.1", 5353))


@pytest.mark.parametrize("entry", [
    {"from": "192.168.65.1", "to": "127.0.0.1:1"},
    {"from": "192.168.65.1:99999", "to": "127.0.0.1:1"},
    {"from": "nope:53", "to": "127.0.0.1:1"},
    {"from": "192.168.65.1:53", "to": "127.0.0.1"},
    {"from": "192.168.65.1:53", "proto": "sctp", "to": "127.0.0.1:1"},
    {"from": "192.168.65.1:53", "proto": "udp", "to": "unix:x.sock"},
    {"from": "192.168.65.1:53", "to": "unix:"},
    "192.168.65.1:53",
])
def test_bad_map_entries_name_the_key(entry):
    with pytest.raises(PolicyError, match=r"flow\.map\[0\]"):
        parse_map([entry], "/run")


def test_metadata_blocked_unless_allowed():
    assert make().decide("tcp", ip("169.254.169.254"), 80) == Reject("metadata")
    assert make().decide("icmp", ip("169.254.169.254"), None).admin
    assert make(allow_metadata=True).decide("tcp", ip("169.254.169.254"), 80) == \
        Target(socket.AF_INET, ("169.254.169.254", 80))


def test_deny_cidr_and_port_rules():
    p = make(deny=["10.0.0.0/8", "0.0.0.0/0:25", "192.0.2.7:1000-2000"])
    assert p.decide("tcp", ip("10.1.2.3"), 80) == Reject("denied")
    assert p.decide("icmp", ip("10.1.2.3"), None) == Reject("denied")
    assert p.decide("tcp", ip("198.51.100.1"), 25) == Reject("denied")
    assert p.decide("udp", ip("198.51.100.1"), 25) == Reject("denied")
    assert p.decide("icmp", ip("198.51.100.1"), None) == Target(socket.AF_INET, ("198.51.100.1", 0))
    assert p.decide("tcp", ip("192.0.2.7"), 1500) == Reject("denied")
    assert p.decide("tcp", ip("192.0.2.7"), 2001) == Target(socket.AF_INET, ("192.0.2.7", 2001))


def test_allow_list_only_those_and_deny_wins():
    p = make(allow=["10.0.0.0/8", "192.168.65.254/32"], deny=["10.9.0.0/16"])
    assert p.decide("tcp", ip("10.1.1.1"), 80) == Target(socket.AF_INET, ("10.1.1.1", 80))
    assert p.decide("tcp", ip("10.9.1.1"), 80) == Reject("denied")
    assert p.decide("tcp", ip("198.51.100.1"), 80) == Reject("denied")
    assert p.decide("tcp", ip("192.168.65.254"), 80) == Target(socket.AF_INET, ("127.0.0.1", 80))
    # the gateway's own services are not subject to allow/deny
    assert p.decide("tcp", ip("192.168.65.1"), 53) == Target(socket.AF_UNIX, "/run/gw/dns-tcp.sock")


def test_deny_host_alias_cuts_off_host_loopback():
    p = make(deny=["192.168.65.254/32"])
    assert p.decide("tcp", ip("192.168.65.254"), 80) == Reject("denied")


def test_martians_and_subnet():
    p = make()
    for a in ("127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.1.1.1"):
        assert p.decide("udp", ip(a), 9) == Reject("martian"), a
    assert p.decide("tcp", ip("192.168.65.77"), 80) == Reject("subnet")
    assert p.decide("udp", ip("192.168.65.255"), 80) == Reject("subnet")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "x", "10.0.0.0/8:http", "10.0.0.0/8:5-1", 7])
def test_bad_rules(bad):
    with pytest.raises(PolicyError, match=r"flow\.deny\[0\]"):
        make(deny=[bad])


def test_default_map_follows_the_dns_address():
    cfg = configmod.load()
    cfg["network"]["dns"] = "192.168.65.2"
    assert default_map(cfg)[0]["from"] == "192.168.65.2:53"


def test_check_config_for_validation():
    from engine.flow.policy import check_config
    cfg = configmod.load()
    check_config(cfg)
    cfg["flow"]["deny"] = "10.0.0.0/8"
    with pytest.raises(PolicyError, match="flow.deny"):
        check_config(cfg)
    cfg["flow"]["deny"] = []
    cfg["flow"]["map"] = [{"from": "x", "to": "y"}]
    with pytest.raises(PolicyError, match=r"flow.map\[0\]"):
        check_config(cfg)
