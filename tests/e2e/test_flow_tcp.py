"""Flow end to end, TCP: bulk transfers with checksums, iperf3, many concurrent connections,
a VPN-like network reached through the host, and a kill -9 of the flow service."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.flow_helpers import (HOST_ALIAS, Corp, free_port, guest_python, http_server,
                                    iperf3_server, make_file, setup_guest, tcp_echo, udp_echo, wait_for)

pytestmark = pytest.mark.e2e
SIZE = 100 * 1000 * 1000


def test_100mb_download_and_upload_sha256(lan, tmp_path):
    stack, guest = lan
    setup_guest(stack, guest)
    want = make_file(tmp_path / "blob", SIZE)
    try:
        with http_server(tmp_path) as srv:
            url = f"http://{HOST_ALIAS}:{srv.port}"
            r = guest.run("sh", "-c", f"curl -sS --max-time 120 {url}/blob | sha256sum", timeout=150)
            assert r.stdout.split()[0] == want, r.stderr
            r = guest.run("curl", "-sS", "--max-time", "120", "-T", str(tmp_path / "blob"), f"{url}/upload",
                          timeout=150)
            assert r.stdout.strip() == want, r.stderr
    finally:
        (tmp_path / "blob").unlink()  # 100 MB: don't leave it in pytest's kept temp dirs
    flows = stack.request("flow", "flows")["flows"]
    for f in flows:
        assert set(f) >= {"proto", "guest", "remote", "host", "state", "bytes_in", "bytes_out", "age"}
    stats = stack.stats("flow")
    assert stats["flows_opened.tcp"] >= 2
    log = stack.log("flow")
    opens = [e for e in log if e.get("event") == "flow_open" and e.get("proto") == "tcp"]
    closes = [e for e in log if e.get("event") == "flow_close" and e.get("proto") == "tcp"]
    assert len(opens) >= 2 and len(closes) >= 2
    assert all("flow" in e for e in opens + closes)
    big = [e for e in closes if max(e["bytes_in"], e["bytes_out"]) >= SIZE]
    assert len(big) == 2, closes


def test_iperf3_both_directions(lan):
    stack, guest = lan
    setup_guest(stack, guest)
    port = free_port()
    srv = iperf3_server(port)
    try:
        for extra in ([], ["-R"]):
            r = guest.run("iperf3", "-c", HOST_ALIAS, "-p", str(port), "-t", "3", *extra, timeout=40)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "receiver" in r.stdout
    finally:
        srv.kill()
        srv.wait()


CONCURRENT = r'''
import asyncio, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def one(i):
    r, w = await asyncio.open_connection(host, port)
    msg = (b"%05d" % i) * 2000
    w.write(msg)
    await w.drain()
    w.write_eof()
    got = await r.read(-1)
    w.close()
    return got == msg
async def main():
    res = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True), 90)
    ok = sum(1 for x in res if x is True)
    errs = {repr(x) for x in res if x is not True}
    print(ok, sorted(errs)[:5])
asyncio.run(main())
'''


def test_500_concurrent_connections(lan):
    stack, guest = lan
    setup_guest(stack, guest)
    with tcp_echo() as echo:
        r = guest.run("sh", "-c", f"ulimit -n 4096; exec {sys.executable} -c '{CONCURRENT}' "
                      f"{HOST_ALIAS} {echo.port} 500", timeout=120)
        assert r.stdout.split()[:1] == ["500"], r.stdout + r.stderr
    assert wait_for(lambda: stack.stats("flow").get("flows_open.tcp", 0) == 0, 15)


def test_vpn_like_network_through_the_host(lan, tmp_path):
    """A network only the host can reach (a veth to a namespace the test made) is reachable
    from the guest, whose only route is the gateway."""
    stack, guest = lan
    setup_guest(stack, guest)
    corp = Corp()
    try:
        (tmp_path / "corp.txt").write_text("corp intranet\n")
        with http_server(tmp_path, bind=corp.ip, netns=corp.name) as srv, \
                udp_echo(bind=corp.ip, netns=corp.name) as echo:
            r = guest.run("curl", "-sS", "--max-time", "10", f"http://{corp.ip}:{srv.port}/corp.txt", timeout=20)
            assert r.stdout == "corp intranet\n", r.stderr
            code = ("import socket,sys\n"
                    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(3)\n"
                    "s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b'vpn')\n"
                    "print(s.recv(100).decode())\n")
            r = guest_python(guest, code, corp.ip, str(echo.port), timeout=20)
            assert r.stdout.strip() == "vpn", r.stderr
            r = guest.run("ping", "-c", "2", "-i", "0.2", "-W", "2", corp.ip, timeout=20)
            assert r.returncode == 0, r.stdout + r.stderr
            route = guest.run("ip", "route").stdout
            assert "10.251." not in route
    finally:
        corp.close()


HOLD = r'''
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"hello"); assert s.recv(100) == b"hello"
print("connected", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"again")
    data = s.recv(100)
    print("got", data, flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except OSError as e:
    print("error", e, flush=True)
'''


def test_kill9_flow_live_connection_sees_rst_new_ones_work(lan, tmp_path):
    stack, guest = lan
    setup_guest(stack, guest)
    (tmp_path / "x.txt").write_text("after restart\n")
    with tcp_echo() as echo, http_server(tmp_path) as srv:
        p = guest.popen(sys.executable, "-c", HOLD, HOST_ALIAS, str(echo.port),
                        stdin=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "connected"
        old = stack.kill9("flow")
        stack.wait_restarted("flow", old)
        assert wait_for(lambda: "s:flow" in stack.request("switch", "stats")["ports"], 10)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
        assert out.strip() == "reset", out + err
        assert stack.stats("flow").get("tcp_rst_no_flow", 0) >= 1
        r = guest.run("curl", "-sS", "--max-time", "10", f"http://{HOST_ALIAS}:{srv.port}/x.txt", timeout=20)
        assert r.stdout == "after restart\n", r.stderr
