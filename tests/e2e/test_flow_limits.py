"""Flow under abuse: a flood of connects to a listener that never answers (the SYN backlog
fills) and UDP to thousands of ports (the flow table fills) while an established
connection keeps working; then everything drains. Also allow/deny and a general mapping."""
from __future__ import annotations

import socket
import sys

import pytest

from tests.e2e.flow_helpers import HOST_ALIAS, free_port, guest_python, setup_guest, tcp_echo, wait_for

pytestmark = pytest.mark.e2e

FLOOD = r'''
import errno, os, select, socket, sys, time
host, tarpit, echo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
live = socket.create_connection((host, echo), timeout=5)
def check(i):
    msg = b"live%d" % i
    live.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += live.recv(100)
    assert got == msg, got
check(0)
socks = []
for i in range(1500):  # connects that will never complete
    s = socket.socket(); s.setblocking(False)
    s.connect_ex((host, tarpit)); socks.append(s)
check(1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(20000, 23000):  # UDP to 3000 closed ports
    try:
        u.sendto(b"x", (host, port))
    except OSError:
        pass
    if port % 500 == 0:
        check(port)
t = time.monotonic(); check(2); took = time.monotonic() - t
print("ok", round(took, 3), flush=True)
for s in socks:
    s.close()
'''


def tarpit():
    """A listener whose accept queue is full and is never drained: connects to it hang."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(ls.getsockname())
        fillers.append(c)
    return ls, fillers


def test_syn_and_udp_floods_are_bounded_and_live_flows_keep_working(make_stack, make_guest):
    guest = make_guest()
    stack = make_stack({"flow": {"max_flows": 800, "connect_timeout": 3.0}}).up(netns=[guest.name])
    guest.wait_link()
    setup_guest(stack, guest)
    ls, fillers = tarpit()
    try:
        with tcp_echo() as echo:
            r = guest.run("sh", "-c", f"ulimit -n 4096; exec {sys.executable} -c '{FLOOD}' {HOST_ALIAS} "
                          f"{ls.getsockname()[1]} {echo.port}", timeout=120)
            assert r.stdout.startswith("ok"), r.stdout + r.stderr
            assert float(r.stdout.split()[1]) < 1.0
            st = stack.stats("flow")
            assert st["flows_open"] <= 800
            assert st.get("drop.syn_backlog", 0) > 0
            assert st.get("evicted", 0) + st.get("drop.flow_limit", 0) > 0
            pid = stack.pid("flow")
            nfds = len(list(__import__("pathlib").Path(f"/proc/{pid}/fd").iterdir()))
            assert nfds < 800 + 200
        # pending connects time out (connect_timeout 3 s), guests give up: the table drains
        assert wait_for(lambda: stack.stats("flow").get("flows_open.tcp", 0) == 0, 30)
        assert stack.stats("flow").get("connect_failed.etimedout", 0) > 0
    finally:
        for c in fillers:
            c.close()
        ls.close()


def test_deny_rst_and_admin_prohibited_and_user_mapping(make_stack, make_guest):
    guest = make_guest()
    with tcp_echo() as echo:
        mapped = {"from": "192.168.65.1:7777", "proto": "tcp", "to": f"127.0.0.1:{echo.port}"}
        denied = free_port()
        stack = make_stack({"flow": {"deny": [f"192.168.65.254/32:{denied}"], "map": [mapped]}}).up(netns=[guest.name])
        guest.wait_link()
        setup_guest(stack, guest)
        code = (
            "import socket,sys,time\n"
            "host, denied = sys.argv[1], int(sys.argv[2])\n"
            "s = socket.create_connection(('192.168.65.1', 7777), timeout=5)\n"
            "s.sendall(b'mapped'); print(s.recv(100).decode())\n"
            "t = time.monotonic()\n"
            "try:\n"
            "    socket.create_connection((host, denied), timeout=5)\n"
            "except ConnectionRefusedError:\n"
            "    print('tcp-refused', round(time.monotonic() - t, 2))\n"
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)\n"
            "u.connect((host, denied)); u.send(b'x')\n"
            "try:\n"
            "    u.recv(10)\n"
            "except OSError as e:\n"
            "    print('udp', e.errno)\n"
            "try:\n"
            "    socket.create_connection(('192.168.65.1', 7778), timeout=5)\n"
            "except ConnectionRefusedError:\n"
            "    print('gateway-closed')\n")
        r = guest_python(guest, code, HOST_ALIAS, str(denied), timeout=30)
        lines = r.stdout.split("\n")
        assert lines[0] == "mapped", r.stdout + r.stderr
        assert lines[1].startswith("tcp-refused") and float(lines[1].split()[1]) < 1.0
        assert lines[2] == "udp 113"  # EHOSTUNREACH: ICMP 3/13 administratively prohibited
        assert lines[3] == "gateway-closed"
        st = stack.stats("flow")
        assert st["rejected.denied"] == 2 and st["rejected.closed"] == 1
