"""Flow end to end: a namespace guest (kernel TCP/IP behind a TAP) reaches host loopback
services through the host alias, with real clients (curl, ping, python sockets)."""
from __future__ import annotations

import pytest

from tests.e2e.flow_helpers import HOST_ALIAS, free_port, guest_python, http_server, setup_guest, udp_echo

pytestmark = pytest.mark.e2e


def test_curl_small_file_and_refused(lan, tmp_path):
    stack, guest = lan
    setup_guest(stack, guest)
    (tmp_path / "hello.txt").write_text("hello from the host\n")
    with http_server(tmp_path) as srv:
        r = guest.run("curl", "-sS", "--max-time", "10", f"http://{HOST_ALIAS}:{srv.port}/hello.txt")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello from the host\n"
    code = (
        "import socket,sys,time\n"
        "t=time.monotonic()\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
        "except ConnectionRefusedError as e:\n"
        "    print('refused', e.strerror, round(time.monotonic()-t, 3))\n")
    r = guest_python(guest, code, HOST_ALIAS, str(free_port()), timeout=30)
    words = r.stdout.split()
    assert words[:3] == ["refused", "Connection", "refused"], r.stdout + r.stderr
    assert float(words[-1]) < 1.0  # at once, not after a timeout


def test_udp_echo_ping_and_port_unreachable(lan):
    stack, guest = lan
    setup_guest(stack, guest)
    with udp_echo() as echo:
        code = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3)\n"
            "s.connect((sys.argv[1], int(sys.argv[2])))\n"
            "for i in range(5):\n"
            "    s.send(b'x%d' % i * 100); assert s.recv(65535) == b'x%d' % i * 100\n"
            "big = bytes(range(256)) * 200\n"
            "s.send(big); assert s.recv(65535) == big\n"
            "import time\n"
            "rtts = []\n"
            "for i in range(200):\n"
            "    t = time.perf_counter(); s.send(b'q' * 40); s.recv(100); rtts.append(time.perf_counter() - t)\n"
            "rtts.sort()\n"
            "print('ok', rtts[100] * 1000, rtts[190] * 1000)\n")
        r = guest_python(guest, code, HOST_ALIAS, str(echo.port), timeout=30)
        words = r.stdout.split()
        assert words[:1] == ["ok"], r.stdout + r.stderr
        assert float(words[1]) < 5.0, f"UDP request/response median {words[1]} ms"
    r = guest.run("ping", "-c", "3", "-i", "0.2", "-W", "2", HOST_ALIAS, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 received" in r.stdout
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3)\n"
        "s.connect((sys.argv[1], int(sys.argv[2])))\n"
        "s.send(b'anyone?')\n"
        "try:\n"
        "    s.recv(100)\n"
        "except ConnectionRefusedError:\n"
        "    print('refused')\n")
    r = guest_python(guest, code, HOST_ALIAS, str(free_port()), timeout=30)
    assert r.stdout.strip() == "refused", r.stdout + r.stderr
    flows = stack.request("flow", "flows")["flows"]
    assert any(f["proto"] == "udp" for f in flows)
    stats = stack.stats("flow")
    assert stats["frames_in"] > 0 and stats["frames_out"] > 0


def test_host_route_unreachable_and_prohibited_reach_the_guest_at_once(lan):
    """Where the host has no way (an `unreachable` route) or is forbidden (`prohibit`), the
    guest's connect fails at once with the matching error (ICMP host unreachable / admin
    prohibited from flow), and ping reports the destination unreachable: never a silent hang.
    The routes cover test-only ranges and send nothing anywhere."""
    import random
    import subprocess
    import time

    stack, guest = lan
    setup_guest(stack, guest)
    x = random.randrange(1, 250)
    unreach, prohibit = f"10.252.{x}.0/24", f"10.253.{x}.0/24"
    added = []
    try:
        for kind, net in (("unreachable", unreach), ("prohibit", prohibit)):
            subprocess.run(["ip", "route", "add", kind, net], check=True)
            added.append(net)
        code = (
            "import socket,sys,time\n"
            "for ip in sys.argv[1:]:\n"
            "    t=time.monotonic()\n"
            "    try:\n"
            "        socket.create_connection((ip, 80), timeout=10); print('connected')\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__, e.errno, round(time.monotonic()-t, 3))\n")
        r = guest_python(guest, code, f"10.252.{x}.1", f"10.253.{x}.1", timeout=40)
        lines = [ln.split() for ln in r.stdout.splitlines()]
        assert len(lines) == 2, r.stdout + r.stderr
        (e1, n1, t1), (e2, n2, t2) = lines
        assert (e1, int(n1)) == ("OSError", 113), lines  # EHOSTUNREACH: "No route to host"
        assert (e2, int(n2)) == ("OSError", 113), lines  # ICMP admin prohibited: the kernel says the same
        assert float(t1) < 3 and float(t2) < 3, lines  # not the 10 s timeout
        t0 = time.monotonic()
        p = guest.run("ping", "-c", "1", "-W", "5", f"10.252.{x}.1", timeout=20)
        assert p.returncode != 0 and "unreachable" in p.stdout.lower(), p.stdout + p.stderr
        assert time.monotonic() - t0 < 4
        c = stack.stats("flow")  # what flow's host connect() met, one per route kind
        assert c.get("connect_failed.ehostunreach", 0) >= 1 and c.get("connect_failed.eacces", 0) >= 1, c
    finally:
        for net in added:
            subprocess.run(["ip", "route", "del", net], check=False)
