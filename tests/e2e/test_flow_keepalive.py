"""Keepalive reflected: when the guest's connection sends keepalive probes, flow turns on
keepalive for the host-side socket too (seen with `ss -o` on the host and in `gangway flows`)."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import pytest

pytestmark = pytest.mark.e2e

CLIENT = r"""
import socket, time
s = socket.create_connection(("192.168.65.254", %d), timeout=5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
s.sendall(b"hi")
time.sleep(8)
"""


def test_guest_keepalive_turns_on_host_keepalive(lan):
    stack, guest = lan
    guest.dhcp()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()[0]), daemon=True).start()
    client = guest.popen("python3", "-c", CLIENT % port)
    try:
        deadline = time.monotonic() + 6
        flows = []
        while time.monotonic() < deadline:
            flows = [f for f in json.loads(stack.gangway("flows", "--json").stdout)
                     if f["remote"] == f"192.168.65.254:{port}"]
            if flows and flows[0].get("keepalive"):
                break
            time.sleep(0.3)
        assert flows and flows[0]["keepalive"], flows
        host_side = flows[0]["host"]  # flow's local address of the host socket
        ss = subprocess.run(["ss", "-tno", "state", "established", f"( sport = :{host_side.rsplit(':', 1)[1]} )"],
                            capture_output=True, text=True).stdout
        assert "keepalive" in ss, ss
        assert stack.stats("flow").get("keepalive_reflected") == 1
    finally:
        client.kill()
        for c in conns:
            c.close()
        srv.close()
