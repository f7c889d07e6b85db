"""Helpers shared by the test_flow_* unit tests (no tests here): a flow service in-process
with a fake switch (frames in through ``on_frames``, frames out captured), a guest TCP
endpoint (the engine's own active side) and frame builders."""
from __future__ import annotations

import ipaddress
import socket
import time

from bus import endpoints
from engine.tcp.conn import TcpConnection
from gangway import config as configmod
from wire import icmp, ipv4, udp, vnet
from wire.ethernet import ETH_HEADER, ETH_LEN, ETHERTYPE_IPV4, mac_bytes
from wire.tcp import build_tcp, parse_tcp

GUEST_MAC = bytes.fromhex("525400123456")
GUEST_IP = ipaddress.IPv4Address("192.168.65.50").packed
HOST_ALIAS = ipaddress.IPv4Address("192.168.65.254").packed
GATEWAY = ipaddress.IPv4Address("192.168.65.1").packed


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


class Rig:
    def __init__(self, run_dir, flow: dict | None = None, network: dict | None = None):
        from services.flow import FlowService

        endpoints.prepare(run_dir)
        cfg = configmod.load()
        cfg["flow"].update(flow or {})
        cfg["network"].update(network or {})
        cfg["log"]["level"] = "warning"
        self.cfg = cfg
        self.gw_mac = mac_bytes(cfg["network"]["gateway_mac"])
        self.svc = FlowService(run_dir, cfg)
        self.sent: list = []
        # partial-checksum TCP frames are completed as a link would, so tests see real checksums
        self.svc.send_frames = lambda frames, source=None, partial=False: self.sent.extend(
            vnet.complete_partial(f) if partial else bytes(f) for f in frames)
        self.svc.start()

    def close(self) -> None:
        self.svc.stop()
        for s in (self.svc.push, self.svc.sub, self.svc.ctl):
            if s is not None:
                s.close(0)
        self.svc.ep.close()
        if self.svc.raw is not None:
            self.svc.raw.close()

    # -- frames -------------------------------------------------------------------------
    def eth(self) -> bytes:
        return ETH_HEADER.pack(self.gw_mac, GUEST_MAC, ETHERTYPE_IPV4)

    def ip_frame(self, dst: bytes, proto: int, body: bytes, src: bytes = GUEST_IP, **kw) -> bytes:
        return self.eth() + bytes(ipv4.build_ipv4(src, dst, proto, len(body), **kw)) + body

    def udp_frame(self, dst: bytes, sport: int, dport: int, payload: bytes, src: bytes = GUEST_IP) -> bytes:
        return self.ip_frame(dst, 17, udp.build_udp(src, dst, sport, dport, payload), src=src, df=False)

    def ping_frame(self, dst: bytes, ident: int, seq: int, payload: bytes = b"x" * 56) -> bytes:
        return self.ip_frame(dst, 1, icmp.build_icmp(icmp.ECHO_REQUEST, 0, ident, seq, payload), df=False)

    def tcp_frame(self, dst: bytes, seg) -> bytes:
        return self.ip_frame(dst, 6, build_tcp(seg, GUEST_IP, dst))

    def feed(self, *frames) -> None:
        self.svc.on_frames(list(frames))

    def take(self) -> list:
        out, self.sent = self.sent, []
        return out

    def run(self, until=None, timeout: float = 3.0) -> bool:
        """Run the service loop until ``until()`` is true (or for ``timeout`` without it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until is not None and until():
                return True
            self.svc.loop.run_once(max_wait=0.01)
        return until is None or until()


def parse_out(frame: bytes):
    """(ip header, l4 memoryview) of a frame the service sent."""
    ip = ipv4.parse_ipv4(frame, ETH_LEN)
    return ip, memoryview(frame)[ip.start : ip.end]


class GuestTcp:
    """The guest's side of one TCP connection, driven through the rig."""

    def __init__(self, rig: Rig, dst: bytes, dport: int, sport: int = 40000, **kw):
        self.rig = rig
        self.dst = dst
        self.conn = TcpConnection.active(local_port=sport, remote_port=dport, now=time.monotonic(),
                                         isn=0xFFFFFF00, **kw)
        self.events: list = []
        self.data = bytearray()
        self.other: list = []  # frames that were not TCP for us (ICMP errors...)
        self.reading = True     # False: leave received data in the engine (window closes)

    def pump(self) -> None:
        now = time.monotonic()
        t = self.conn.timer()
        if t is not None and t <= now:
            self.conn.on_timer(now)
        segs = self.conn.segments_out(now)
        if segs:
            self.rig.feed(*[self.rig.tcp_frame(self.dst, s) for s in segs])
        for f in self.rig.take():
            ip, l4 = parse_out(f)
            if ip.proto != 6:
                self.other.append(f)
                continue
            seg = parse_tcp(l4, src=ip.src, dst=ip.dst)
            if seg.dport != self.conn.local_port:
                self.other.append(f)
                continue
            self.conn.on_segment(seg, time.monotonic())
        self.events += self.conn.events()
        if self.reading and self.conn.readable():
            self.data += self.conn.recv()

    def run(self, until, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if until():
                return True
            self.rig.svc.loop.run_once(max_wait=0.005)
        self.pump()
        return until()


def listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
