"""End to end on a real namespace guest (the kernel's own stack behind a TAP): DHCP with
busybox udhcpc, ping of the gateway, guest-to-guest switching, restarts, capture and replay."""
from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from bus import endpoints, pcap

pytestmark = pytest.mark.e2e
SUBNET = ipaddress.IPv4Network("192.168.65.0/24")


def lease_env(guest) -> dict:
    path = Path(f"/tmp/udhcpc-lease-{guest.name}")
    env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    path.unlink()
    return env


def ping(guest, addr: str, count: int = 2, timeout: float = 15) -> bool:
    r = guest.run("ping", "-c", str(count), "-W", "1", "-i", "0.2", addr, timeout=timeout)
    return r.returncode == 0


def wait_ping(guest, addr: str, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if guest.run("ping", "-c", "1", "-W", "1", addr, timeout=5).returncode == 0:
            return time.monotonic() - start
    raise AssertionError(f"{addr} not reachable within {within} s")


def test_udhcpc_lease_route_dns_and_ping(lan):
    stack, guest = lan
    ip = guest.dhcp()
    assert ipaddress.IPv4Address(ip) in SUBNET
    env = lease_env(guest)
    assert env["router"] == "192.168.65.1"
    assert env["dns"].split() == ["192.168.65.1"]
    assert env["mtu"] == "1500"
    assert "gangway.internal" in env.get("search", "") + env.get("domain", "")
    route = guest.run("ip", "route", "show", "default").stdout
    assert "via 192.168.65.1" in route
    assert ping(guest, "192.168.65.1")
    leases = stack.request("dhcp", "leases")["leases"]
    assert any(str(le.get("ip")) == ip for le in leases)
    counters = stack.stats("switch")
    assert counters["frames_in"] > 0 and counters.get("gateway_pings", 0) >= 2


def test_two_guests_ping_each_other(make_stack, make_guest):
    a, b = make_guest(), make_guest()
    make_stack().up(netns=[a.name, b.name])
    a.wait_link()
    b.wait_link()
    ip_a, ip_b = a.dhcp(), b.dhcp()
    assert ip_a != ip_b
    assert ping(a, ip_b) and ping(b, ip_a)


def test_same_address_after_whole_stack_restart(make_stack, make_guest):
    guest = make_guest()
    stack = make_stack()
    stack.up(netns=[guest.name])
    guest.wait_link()
    ip = guest.dhcp()
    stack.down()
    guest.run("ip", "link", "del", "eth0")
    stack.up(netns=[guest.name])
    guest.wait_link()
    assert guest.dhcp() == ip


@pytest.mark.parametrize("service", ["dhcp", "switch", "bridge"])
def test_kill9_restart_keeps_address_and_link(lan, service):
    stack, guest = lan
    ip = guest.dhcp()
    assert ping(guest, "192.168.65.1")
    old = stack.kill9(service)
    stack.wait_restarted(service, old)
    took = wait_ping(guest, "192.168.65.1", within=10)
    assert guest.dhcp() == ip  # renews and keeps its address
    assert took < 10
    assert ping(guest, "192.168.65.1")


def _capture(stack, out: Path, duration: float) -> subprocess.Popen:
    ready = out.with_suffix(".ready")
    p = subprocess.Popen([*stack_cmd(stack), "capture", "-o", str(out), "--duration", str(duration),
                          "--ready-file", str(ready)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline, "capture did not start"
        time.sleep(0.05)
    return p


def stack_cmd(stack):
    import sys
    return [sys.executable, "-m", "gangway.cli", "--run-dir", str(stack.run_dir)]


def tshark_dhcp(path: Path) -> list[str]:
    r = subprocess.run(["tshark", "-r", str(path), "-Y", "dhcp", "-T", "fields", "-e", "dhcp.option.dhcp"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_capture_dhcp_and_replay_discover(lan, make_stack, tmp_path):
    stack, guest = lan
    cap = tmp_path / "dhcp.pcap"
    p = _capture(stack, cap, duration=6)
    guest.dhcp()
    p.wait(timeout=20)
    types = tshark_dhcp(cap)
    # 1 Discover, 2 Offer, 3 Request, 5 ACK
    for t in ("1", "2", "3", "5"):
        assert t in types, f"DHCP message type {t} missing from {types}"
    # take the DISCOVER out and replay it into a fresh stack
    with open(cap, "rb") as f:
        frames = [fr for _, fr in pcap.read_pcap(f)]
    discover = tmp_path / "discover.pcap"
    with open(discover, "wb") as f:
        w = pcap.PcapWriter(f)
        for fr in frames:
            if len(fr) > 282 and fr[12:14] == b"\x08\x00" and fr[23] == 17 and fr[36:38] == b"\x00\x43" and b"\x35\x01\x01" in fr:
                w.write(fr, time.time())
                break
    fresh = make_stack()
    fresh.up()
    cap2 = tmp_path / "replay.pcap"
    p2 = _capture(fresh, cap2, duration=3)
    r = subprocess.run([*stack_cmd(fresh), "replay", str(discover)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    p2.wait(timeout=20)
    assert "2" in tshark_dhcp(cap2)  # a new OFFER
    assert any(e.get("event") == "dhcp_offer" or "offer" in str(e.get("event", "")).lower() for e in fresh.log("dhcp")) \
        or fresh.stats("dhcp").get("dhcp.offers", 0) >= 1


def _mutate(frame: bytes, rng: random.Random) -> bytes:
    b = bytearray(frame)
    choice = rng.random()
    if choice < 0.4 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif choice < 0.6:
        b = b[: rng.randrange(len(b) + 1)]
    elif choice < 0.75:
        b += os.urandom(rng.randint(1, 2000))
    elif choice < 0.9:
        b = bytearray(os.urandom(rng.randint(0, 1600)))
    else:
        b = bytearray(os.urandom(14)) + b[14:]
    return bytes(b)


def test_fuzzed_frames_do_not_kill_services(lan, tmp_path):
    stack, guest = lan
    cap = tmp_path / "seed.pcap"
    p = _capture(stack, cap, duration=6)
    guest.dhcp()
    ping(guest, "192.168.65.1", count=3)
    ping(guest, "192.168.65.254", count=2)  # ICMP through flow
    guest.run("dig", "@192.168.65.1", "+time=1", "+tries=1", "host.gangway.internal", timeout=10)  # dns
    guest.run("python3", "-c", "import socket\ntry: socket.create_connection(('192.168.65.254', 9), timeout=2)\n"
              "except OSError: pass", timeout=10)  # TCP SYN and RST through flow
    p.wait(timeout=20)
    with open(cap, "rb") as f:
        seeds = [fr for _, fr in pcap.read_pcap(f)]
    assert len({fr[23] for fr in seeds if fr[12:14] == b"\x08\x00"}) >= 3  # ICMP, TCP and UDP seeds
    pids = {s: stack.pid(s) for s in ("switch", "bridge", "dhcp", "dns", "flow")}
    rng = random.Random(1234)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(endpoints.ipc(stack.run_dir, endpoints.SWITCH_IN))
    sent = 0
    deadline = time.monotonic() + 30
    while sent < 5000 and time.monotonic() < deadline:
        batch = [_mutate(rng.choice(seeds), rng) for _ in range(50)]
        push.send_multipart([b"g:fuzz", *batch])
        sent += len(batch)
        time.sleep(0.005)
    push.close()
    time.sleep(1)
    assert {s: stack.pid(s) for s in pids} == pids, "a service restarted under fuzzing"
    assert ping(guest, "192.168.65.1")
    drops = {k: v for k, v in stack.stats("switch").items() if k.startswith("drop.")}
    assert sum(drops.values()) > 0


def test_bad_config_names_the_key(tmp_path):
    import sys
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nmtu = "big"\n')
    r = subprocess.run([sys.executable, "-m", "gangway.cli", "--run-dir", str(tmp_path / "run"), "up", "-d",
                        "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "network.mtu" in r.stderr
    bad.write_text('[dhcp]\nleas_time = 10\n')
    r = subprocess.run([sys.executable, "-m", "gangway.cli", "--run-dir", str(tmp_path / "run"), "up", "-d",
                        "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "dhcp.leas_time" in r.stderr


def test_status_ctl_and_stats_commands(lan):
    stack, guest = lan
    r = stack.gangway("status")
    for svc in ("switch", "bridge", "dhcp"):
        assert svc in r.stdout and "RUNNING" in r.stdout
    r = stack.gangway("ctl", "restart", "dhcp")
    assert "started" in r.stdout
    r = stack.gangway("stats")
    assert '"switch"' in r.stdout and '"counters"' in r.stdout
    assert guest.dhcp()
