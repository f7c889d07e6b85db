"""Helpers for the flow end-to-end tests: servers on host loopback (HTTP with upload hashing,
UDP echo, TCP hold-open), guest set-up, and a corp namespace reached over a veth pair.

Network safety: servers bind 127.0.0.1 (or an address inside a namespace the test created);
guests reach them only through the host alias or through gangway to that namespace.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

HOST_ALIAS = "192.168.65.254"
GUEST_IP = "192.168.65.50"

SERVER = r'''
import hashlib, http.server, os, socketserver, sys
root = sys.argv[1]
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *a):
        pass
    def do_PUT(self):
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            n -= len(chunk)
        body = h.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_PUT
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    def server_bind(self):  # no getfqdn(): never a DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]
s = S((sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''

TCP_ECHO = r'''
import asyncio, sys
async def echo(r, w):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
        w.close()
    except ConnectionError:
        pass
async def main():
    srv = await asyncio.start_server(echo, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", 0, backlog=2048)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
'''

UDP_ECHO = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(data, addr)
'''


class Proc:
    """A helper process (by PID) that prints its port on the first line."""

    def __init__(self, args: list, cwd=None):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
        line = self.p.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"helper did not start: {line!r} {self.p.stderr.read()}")
        self.port = int(line)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def http_server(root: Path, bind: str = "127.0.0.1", netns: str | None = None) -> Proc:
    pre = ["ip", "netns", "exec", netns] if netns else []
    return Proc(pre + [sys.executable, "-c", SERVER, str(root), bind])


def tcp_echo(bind: str = "127.0.0.1", netns: str | None = None) -> Proc:
    pre = ["ip", "netns", "exec", netns] if netns else []
    return Proc(pre + [sys.executable, "-c", TCP_ECHO, bind])


def iperf3_server(port: int) -> subprocess.Popen:
    p = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def up():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    if not wait_for(up, 10):
        p.kill()
        p.wait()
        raise RuntimeError("iperf3 -s did not start")
    return p


def udp_echo(bind: str = "127.0.0.1", netns: str | None = None) -> Proc:
    pre = ["ip", "netns", "exec", netns] if netns else []
    return Proc(pre + [sys.executable, "-c", UDP_ECHO, bind])


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def setup_guest(stack, guest, timeout: float = 30) -> str:
    """DHCP when the dhcp service runs, else a static address and default route."""
    from bus.client import ControlError

    try:
        stack.request("dhcp", "ping", timeout=0.5)
        return guest.dhcp(timeout=timeout)
    except ControlError:
        guest.run("ip", "addr", "add", f"{GUEST_IP}/24", "dev", "eth0")
        guest.run("ip", "route", "replace", "default", "via", "192.168.65.1")
        guest.ip = GUEST_IP
        return GUEST_IP


def make_file(path: Path, size: int) -> str:
    """A file of random bytes; returns its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def guest_python(guest, code: str, *args: str, timeout: float = 120):
    return guest.run(sys.executable, "-c", code, *args, timeout=timeout)


class Corp:
    """A namespace "corp<random>" joined to the host namespace by a veth pair: host side
    10.251.X.1/30, corp side 10.251.X.2/30. Stands for a VPN-reachable network."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.name = f"corp{tag}"
        x = int(tag[:2], 16) % 250 + 1
        self.host_ip, self.ip = f"10.251.{x}.1", f"10.251.{x}.2"
        self.host_if, self.peer_if = f"vc{tag}", f"vp{tag}"
        self.made = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.made.append("ns")
        self.etc = Path("/etc/netns") / self.name
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # never the host's resolver
        subprocess.run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if], check=True)
        self.made.append("veth")
        subprocess.run(["ip", "link", "set", self.peer_if, "netns", self.name], check=True)
        subprocess.run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if], check=True)
        subprocess.run(["ip", "link", "set", self.host_if, "up"], check=True)
        # no default route in corp: it answers the host's veth address and nothing else
        for cmd in (["ip", "addr", "add", f"{self.ip}/30", "dev", self.peer_if],
                    ["ip", "link", "set", self.peer_if, "up"], ["ip", "link", "set", "lo", "up"]):
            subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=True)

    def close(self) -> None:
        if "veth" in self.made:
            subprocess.run(["ip", "link", "del", self.host_if], check=False, capture_output=True)
        if "ns" in self.made:
            subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
            shutil.rmtree(self.etc, ignore_errors=True)


def wait_for(pred, timeout: float = 10, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
