"""The CLI as a user drives it: `gangway flows` lists a live connection, `gangway stats`
shows every service, `gangway leases` the lease, and `gangway up` in the foreground prints
the QEMU command line."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.e2e


def test_flows_stats_leases(lan):
    stack, guest = lan
    ip = guest.dhcp()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(srv.accept()[0]))
    t.start()
    client = guest.popen("python3", "-c", f"import socket,time;s=socket.create_connection(('192.168.65.254',{port}));"
                         "s.sendall(b'x'*1000);time.sleep(10)")
    t.join(timeout=10)
    assert accepted
    accepted[0].recv(4096)
    try:
        deadline = time.monotonic() + 5
        while True:
            out = stack.gangway("flows").stdout
            if f":{port}" in out or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "PROTO" in out.splitlines()[0]
        line = next(ln for ln in out.splitlines() if f"192.168.65.254:{port}" in ln)
        assert "tcp" in line and ip in line and "ESTABLISHED" in line
        flows = json.loads(stack.gangway("flows", "--json").stdout)
        assert any(f["remote"] == f"192.168.65.254:{port}" and f["bytes_out"] >= 1000 for f in flows)
        stats = json.loads(stack.gangway("stats").stdout)
        assert set(stats) >= {"switch", "bridge", "dhcp", "dns", "flow"}
        assert stats["flow"]["counters"]["flows_open"] >= 1
        leases = json.loads(stack.gangway("leases").stdout)
        assert any(le["ip"] == ip and le["state"] == "bound" for le in leases)
    finally:
        client.kill()
        accepted[0].close()
        srv.close()


def test_up_foreground_prints_qemu_command(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "gangway.cli", "--run-dir", str(run), "up"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = p.stdout.readline() + p.stdout.readline()
        assert "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=" in line
        assert str(run.resolve() / "qemu.sock") in line
        from bus.client import ControlError, request
        deadline = time.monotonic() + 20
        while True:
            try:
                request(run, "flow", "ping", timeout=0.5)
                break
            except ControlError:
                assert time.monotonic() < deadline, "stack did not come up"
                time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        from gangway import runner
        runner.stop(run)
