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
