"""The flow service: the guest's TCP, UDP and ICMP echo re-made with host sockets.

Frames for the gateway MAC that the switch does not answer itself arrive on topic s:flow.
Each guest flow (5-tuple) gets a host socket:

- TCP: a guest SYN starts a non-blocking connect() to the mapped target; the passive
  :class:`~engine.tcp.conn.TcpConnection` answers SYN-ACK only when it succeeds (RST when
  refused, ICMP unreachable when unreachable or timed out). Bytes then move both ways with
  end-to-end flow control: the host socket is read only while the connection has send space,
  and data is taken from the connection only when the host socket can take it (one bounded
  chunk in between). Half-closes and resets are propagated both ways.
- UDP: one connected host socket per flow, closed after ``flow.udp_idle_timeout`` seconds
  idle; ECONNREFUSED becomes ICMP port unreachable to the guest.
- ICMP echo: unprivileged ping sockets (a raw socket as root when ping sockets are not
  permitted by net.ipv4.ping_group_range); replies carry the guest's own id and sequence.

Pure parts live in engine/flow (parsing, policy and mapping, the flow table, fragments);
this module is the I/O: host sockets on one epoll (registered with the service loop), the
bus, timers, logs and control requests ("flows", "stats").
"""
from __future__ import annotations

import errno
import itertools
import os
import resource
import select
import socket
import struct

from engine.flow import packets
from engine.flow.frag import Reassembler
from engine.flow.packets import Builder, Unsupported, rst_for, tcp_checksum_ok, tcp_frame, udp_quote
from engine.flow.policy import Policy, Reject, TCP, UDP, ICMP
from engine.flow.table import FlowTable
from engine.tcp.conn import State, TcpConfig, TcpConnection
from engine.tcp.events import Closed, DataReadable, EndOfStream, Reset
from engine.tcp.isn import IsnGenerator
from services.common import Service
from wire import icmp, ipv4
from wire.ethernet import FrameError, mac_bytes
from wire.tcp import ACK, RST, SYN, FIN, TcpError, parse_tcp
from wire.udp import parse_udp

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLERR, EPOLLHUP = select.EPOLLERR, select.EPOLLHUP
P_TCP, P_UDP, P_ICMP = ipv4.PROTO_TCP, ipv4.PROTO_UDP, ipv4.PROTO_ICMP
PROTO_NAMES = {P_TCP: TCP, P_UDP: UDP, P_ICMP: ICMP}

MAX_SEGMENT = 65535 - 14 - 20 - 60 - 200  # TCP payload per frame to the guest (TSO/GSO'd later)
TCP_RCV_BUF = 2048 * 1024  # engine receive buffer (guest -> host data not yet taken)
TCP_SND_BUF = 4096 * 1024  # engine send buffer (host -> guest data not yet acknowledged)
TO_HOST_CHUNK = 256 * 1024  # bytes taken from the engine per host-socket write
READ_CHUNK = 256 * 1024  # bytes read from a host socket at once
UDP_READS = 64  # datagrams read per readiness event
FD_RESERVE = 128  # descriptors kept for the bus, logs and control
ICMP_IDLE = 30.0  # seconds an echo flow lives without traffic
SWEEP_EVERY = 1.0
DRAIN_TIMEOUT = 30.0  # seconds a closed connection may wait for its host socket to drain
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 15, 4  # host side, once the guest probes

# ICMP unreachable code for a Reject reason (UDP and ICMP; TCP always gets RST)
_REJECT_CODE = {"closed": icmp.PORT_UNREACH, "subnet": icmp.HOST_UNREACH}


def _addr(ip: bytes, port: int | None = None) -> str:
    s = socket.inet_ntoa(ip)
    return s if port is None else f"{s}:{port}"


def _sockname(sock) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return ""
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return f"unix:{name}" if name else "unix"


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _Flow:
    """What every flow has: identity, the guest MAC to answer, counters for "flows"."""

    proto = ""
    replied = True

    def __init__(self, svc: "FlowService", key, mac: bytes, target, now: float):
        self.svc = svc
        self.id = next(svc.ids)
        self.key = key
        self.mac = mac
        self.eth = svc.build.eth(mac)
        self.target = target
        self.created = now
        self.bytes_in = 0   # host -> guest
        self.bytes_out = 0  # guest -> host
        self.sock = None
        self.host = ""
        self.mask = 0

    # identity as the guest sees it
    @property
    def guest(self) -> str:
        return _addr(self.key[1], self.key[2])

    @property
    def remote(self) -> str:
        return _addr(self.key[3], self.key[4])

    def state(self) -> str:
        return "open"

    def describe(self, now: float) -> dict:
        return {"id": self.id, "proto": self.proto, "guest": self.guest, "remote": self.remote,
                "host": self.host, "target": self.target.text() if self.target else "",
                "state": self.state(), "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "age": round(now - self.created, 3), "keepalive": getattr(self, "keepalive", False)}


# ---------------------------------------------------------------------------------- UDP

class UdpFlow(_Flow):
    proto = UDP

    def __init__(self, svc, key, mac, target, sock, now):
        super().__init__(svc, key, mac, target, now)
        self.sock = sock
        self.replied = False
        self.last_quote = b""

    def on_io(self, ev: int) -> None:
        svc = self.svc
        key = self.key
        sock = self.sock
        out = svc.out
        src, sport, gip, gport = key[3], key[4], key[1], key[2]
        for _ in range(UDP_READS):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                svc.count("udp_port_unreachable")
                out.append(svc.build.icmp_error(self.mac, src, None, icmp.DEST_UNREACH, icmp.PORT_UNREACH,
                                                quote=self.last_quote, guest=gip))
                break
            except OSError as e:
                code = {errno.EHOSTUNREACH: icmp.HOST_UNREACH, errno.ENETUNREACH: icmp.NET_UNREACH}.get(e.errno)
                if code is not None:
                    out.append(svc.build.icmp_error(self.mac, src, None, icmp.DEST_UNREACH, code,
                                                    quote=self.last_quote, guest=gip))
                svc.drops.drop("udp_recv_error", error=str(e))
                break
            self.replied = True
            self.bytes_in += len(data)
            try:
                out.extend(svc.build.udp(self.mac, src, gip, sport, gport, data))
            except ValueError:
                svc.drops.drop("udp_too_large")
        svc.table.touch(key, svc.loop.now())


# ---------------------------------------------------------------------------------- ICMP

class EchoFlow(_Flow):
    """Echo requests from one guest (ip, id) to one address; ``sock`` is this flow's ping
    socket, or None with the service's shared raw socket (then ``host_id`` is our id)."""

    proto = ICMP

    def __init__(self, svc, key, mac, target, sock, host_id, now):
        super().__init__(svc, key, mac, target, now)
        self.sock = sock
        self.host_id = host_id
        self.replied = False
        self.last_quote = b""

    @property
    def guest(self) -> str:
        return f"{_addr(self.key[1])}#{self.key[2]}"

    @property
    def remote(self) -> str:
        return _addr(self.key[3])

    def reply(self, data) -> None:
        """An ICMP message from the host socket (header + payload)."""
        svc = self.svc
        if len(data) < 8:
            return
        typ, code, _cs, _id, seq = icmp.ICMP.unpack_from(data, 0)
        if typ != icmp.ECHO_REPLY:
            return
        self.replied = True
        self.bytes_in += len(data)
        svc.out.extend(svc.build.echo_reply(self.mac, self.key[3], self.key[1], self.key[2], seq,
                                            memoryview(data)[8:]))
        svc.table.touch(self.key, svc.loop.now())

    def on_io(self, ev: int) -> None:
        svc = self.svc
        for _ in range(UDP_READS):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                code = {errno.EHOSTUNREACH: icmp.HOST_UNREACH, errno.ENETUNREACH: icmp.NET_UNREACH}.get(e.errno)
                if code is not None and self.last_quote:
                    svc.out.append(svc.build.icmp_error(self.mac, self.key[3], None, icmp.DEST_UNREACH, code,
                                                        quote=self.last_quote, guest=self.key[1]))
                svc.count("icmp_errors")
                return
            self.reply(data)


# ---------------------------------------------------------------------------------- TCP

class TcpFlow(_Flow):
    proto = TCP

    def __init__(self, svc, key, mac, target, conn: TcpConnection, sock, syn_quote: bytes, now):
        super().__init__(svc, key, mac, target, now)
        self.conn = conn
        self.sock = sock
        self.fd = sock.fileno()
        self.syn_quote = syn_quote
        self.connecting = True
        self.connect_timer = None
        self.timer = None
        self.timer_at = None
        self.to_host = b""        # taken from the engine, not yet written to the host
        self.host_eof = False     # the host socket read EOF (we called conn.close())
        self.guest_eof = False    # the guest's FIN arrived (EndOfStream)
        self.shut_wr = False      # shutdown(SHUT_WR) done on the host socket
        self.keepalive = False    # the guest probes: the host socket keeps the far end alive too
        self.engine_done = False  # Closed seen
        self.reset = ""           # why it was reset, if it was
        self.done_at = None       # when the engine reached CLOSED (host data may still drain)
        self.src = key[3]         # our address as the guest sees it
        self.dst = key[1]

    def state(self) -> str:
        if self.connecting:
            return "CONNECTING"
        return self.conn.state.name

    # -- host socket readiness -------------------------------------------------------------
    def on_io(self, ev: int) -> None:
        svc = self.svc
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0 and not ev & (EPOLLERR | EPOLLHUP):
                svc.tcp_connected(self)
            else:
                svc.tcp_connect_failed(self, err or errno.ECONNREFUSED)
            return
        if ev & EPOLLERR:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.host_reset(os.strerror(err))
                return
        if ev & EPOLLOUT:
            self.pump_to_host()
        if ev & (EPOLLIN | EPOLLHUP) and self.sock is not None and not self.host_eof:
            self.read_host()
        svc.dirty.add(self)

    def read_host(self) -> None:
        conn = self.conn
        sock = self.sock
        for _ in range(4):
            space = conn.send_space()
            if space <= 0:
                return
            try:
                data = sock.recv(min(space, READ_CHUNK))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.host_reset(e.strerror or str(e))
                return
            if not data:
                self.host_eof = True
                conn.close()
                return
            self.bytes_in += len(data)
            try:
                conn.send(data)
            except Exception as e:  # engine refuses (closed meanwhile): drop the host side
                self.svc.drops.drop("tcp_send_after_close", error=repr(e))
                self.host_eof = True
                return
            if len(data) < min(space, READ_CHUNK):
                return

    def pump_to_host(self) -> None:
        """Move guest data to the host socket while it takes it."""
        conn = self.conn
        sock = self.sock
        if sock is None:
            return
        while True:
            buf = self.to_host
            if not buf:
                if not conn.readable():
                    break
                buf = conn.recv(TO_HOST_CHUNK)
            try:
                n = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self.to_host = b""
                self.host_reset(e.strerror or str(e))
                return
            self.bytes_out += n
            if n < len(buf):
                self.to_host = memoryview(buf)[n:] if n else buf
                return
            self.to_host = b""
        if self.guest_eof and not self.shut_wr:
            self.shut_wr = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def reflect_keepalive(self) -> None:
        """The guest sends keepalive probes on this connection: do the same towards the host's
        peer, so a far end that dies is noticed and the guest gets an RST (via host_reset)."""
        self.keepalive = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        except OSError:
            pass
        self.svc.count("keepalive_reflected")

    def host_reset(self, why: str) -> None:
        """The host side reset (or failed): RST the guest, drop the host socket."""
        svc = self.svc
        if not self.reset:
            self.reset = f"host: {why}"
        rst = self.conn.abort()
        if rst is not None:
            svc.out_tcp.append(tcp_frame(self.eth, self.src, self.dst, rst, svc.build.ident(), True))
        svc.tcp_close_sock(self, linger0=True)
        svc.dirty.add(self)

    def want(self) -> int:
        if self.sock is None:
            return 0
        if self.connecting:
            return EPOLLOUT
        m = 0
        if not self.host_eof and self.conn.send_space() > 0 and self.conn.state in _HOST_READ_STATES:
            m |= EPOLLIN
        if self.to_host:
            m |= EPOLLOUT
        return m


_HOST_READ_STATES = frozenset((State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT))


# ---------------------------------------------------------------------------------- service

class FlowService(Service):
    name = "flow"
    subscribe = (b"s:flow",)

    def __init__(self, run_dir, cfg=None):
        super().__init__(run_dir, cfg)
        net, fl = self.cfg["network"], self.cfg["flow"]
        nofile = raise_nofile()
        self.policy = Policy.from_config(self.cfg, str(self.run_dir))
        self.mtu = net["mtu"]
        self.build = Builder(mac_bytes(net["gateway_mac"]), self.mtu)
        self.max_flows = max(16, min(int(fl["max_flows"]), nofile - FD_RESERVE))
        self.table = FlowTable(self.max_flows, int(fl.get("syn_backlog", 256)))
        self.udp_idle = float(fl["udp_idle_timeout"])
        self.connect_timeout = float(fl["connect_timeout"])
        self.reasm = Reassembler()
        self.isn = IsnGenerator()
        self.ids = itertools.count(1)
        self.tcp_config = TcpConfig()
        self.out: list = []
        self.out_tcp: list = []  # TCP frames with partial checksums (see bus/endpoints.py)
        self.dirty: set = set()
        self.ep = select.epoll()
        self.handlers: dict = {}  # fd -> flow
        self.loop.add_reader(self.ep.fileno(), self._on_epoll)
        self.ping_mode = self._probe_ping()
        self.raw = None
        self.raw_ids: dict = {}  # (remote ip, host id) -> EchoFlow
        self.next_raw_id = int.from_bytes(os.urandom(2), "big")

    # -- setup -------------------------------------------------------------------------------
    def _probe_ping(self) -> str:
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
            return "ping"
        except OSError:
            pass
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.close()
            return "raw"
        except OSError:
            return "none"

    def start(self) -> None:
        if self.ping_mode == "raw":
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.raw.setblocking(False)
            self.loop.add_reader(self.raw.fileno(), self._on_raw)
        self.loop.call_every(SWEEP_EVERY, self._sweep)
        self.log.info("flow_ready", max_flows=self.max_flows, ping=self.ping_mode,
                      mappings=[f"{k[0]}:{_addr(k[1], k[2])}->{t.text()}" for k, t in self.policy.map.items()])

    def stop(self) -> None:
        for key in list(self.table.flows):
            self._close_flow(self.table.flows[key], "shutdown")

    # -- epoll -------------------------------------------------------------------------------
    def _watch(self, flow, mask: int) -> None:
        if flow.sock is None or mask == flow.mask:
            return
        fd = flow.sock.fileno()
        if flow.mask == 0:
            self.ep.register(fd, mask)
            self.handlers[fd] = flow
        elif mask == 0:
            self.ep.unregister(fd)
            self.handlers.pop(fd, None)
        else:
            self.ep.modify(fd, mask)
        flow.mask = mask

    def _unwatch(self, flow) -> None:
        if flow.mask and flow.sock is not None:
            fd = flow.sock.fileno()
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass
            self.handlers.pop(fd, None)
        flow.mask = 0

    def _on_epoll(self) -> None:
        try:
            events = self.ep.poll(0, 256)
        except InterruptedError:
            return
        handlers = self.handlers
        for fd, ev in events:
            flow = handlers.get(fd)
            if flow is None:
                continue
            try:
                flow.on_io(ev)
            except Exception as e:
                self.log.exception("flow_io_error", flow=flow.id, error=repr(e))
                self._close_flow(flow, f"internal error: {e!r}")
        self._flush()

    # -- frames from the guest ---------------------------------------------------------------
    def on_frames(self, frames: list) -> None:
        now = self.loop.now()
        self.count("frames_in", len(frames))
        for frame in frames:
            try:
                self._frame(frame, now)
            except FrameError as e:
                self.drops.drop("malformed", error=str(e))
            except TcpError as e:
                self.drops.drop("bad_tcp", error=str(e))
            except Unsupported as e:
                self.drops.drop(e.reason)
            except Exception as e:  # never die on a frame
                self.log.exception("frame_error", error=repr(e))
                self.drops.drop("internal_error", error=repr(e))
        self._flush()

    def _frame(self, frame, now: float) -> None:
        pkt = packets.parse(frame)
        ip = pkt.ip
        if ip.is_fragment:
            whole = self.reasm.add(frame, ip, now)
            if whole is None:
                self.count("fragments")
                return
            pkt = packets.parse(whole)
        proto = pkt.proto
        if proto == P_TCP:
            self._tcp(pkt, now)
        elif proto == P_UDP:
            self._udp(pkt, now)
        else:
            self._icmp(pkt, now)

    def _flush(self) -> None:
        if self.dirty:
            now = self.loop.now()
            dirty, self.dirty = self.dirty, set()
            for flow in dirty:
                try:
                    self._tcp_service(flow, now)
                except Exception as e:
                    self.log.exception("flow_error", flow=flow.id, error=repr(e))
                    self._close_flow(flow, f"internal error: {e!r}")
        if self.out:
            out, self.out = self.out, []
            self.count("frames_out", len(out))
            self.send_frames(out)
        if self.out_tcp:
            out, self.out_tcp = self.out_tcp, []
            self.count("frames_out", len(out))
            self.send_frames(out, partial=True)

    def _reject(self, pkt, rej: Reject, what: str) -> None:
        """ICMP error for a refused UDP/ICMP flow (admin prohibited / port / host unreachable)."""
        self.count(f"rejected.{rej.reason}")
        code = _REJECT_CODE.get(rej.reason, icmp.ADMIN_PROHIBITED)
        self.out.append(self.build.icmp_error(pkt.src_mac, pkt.dst, pkt, icmp.DEST_UNREACH, code))

    def _admit(self, pending: bool = False) -> str | None:
        reason = self.table.admit(pending=pending)
        if reason == "flow_limit":
            victim = self.table.make_room()
            if victim is not None:
                self.count("evicted")
                self._close_flow(victim[1], "evicted", removed=True)
                reason = self.table.admit(pending=pending)
        return reason

    # -- UDP ---------------------------------------------------------------------------------
    def _udp(self, pkt, now: float) -> None:
        ip = pkt.ip
        sport, dport, payload = parse_udp(pkt.frame, ip.start, ip.end, pkt.src, pkt.dst)
        if not sport or not dport:
            self.drops.drop("port_zero")
            return
        key = (P_UDP, pkt.src, sport, pkt.dst, dport)
        flow = self.table.get(key)
        if flow is None:
            d = self.policy.decide(UDP, pkt.dst, dport)
            if isinstance(d, Reject):
                self._reject(pkt, d, "udp")
                return
            if self._admit():
                self.drops.drop("flow_limit")
                return
            try:
                sock = socket.socket(d.family, socket.SOCK_DGRAM)
            except OSError as e:
                self.drops.drop("socket_error", error=str(e))
                return
            sock.setblocking(False)
            try:
                sock.connect(d.addr)
            except OSError as e:
                sock.close()
                code = icmp.NET_UNREACH if e.errno == errno.ENETUNREACH else icmp.HOST_UNREACH
                self.count("udp_connect_failed")
                self.out.append(self.build.icmp_error(pkt.src_mac, pkt.dst, pkt, icmp.DEST_UNREACH, code))
                return
            flow = UdpFlow(self, key, pkt.src_mac, d, sock, now)
            flow.host = _sockname(sock)
            self.table.add(key, flow, now=now)
            self._watch(flow, EPOLLIN)
            self.count("flows_opened.udp")
            self.log.info("flow_open", flow=flow.id, proto=UDP, guest=flow.guest, remote=flow.remote,
                          target=d.text(), host=flow.host)
        else:
            flow.mac = pkt.src_mac
            self.table.touch(key, now)
        if not flow.replied or not flow.last_quote:
            flow.last_quote = udp_quote(pkt.src, pkt.dst, sport, dport, payload)
        try:
            flow.sock.send(payload)
            flow.bytes_out += len(payload)
        except (BlockingIOError, InterruptedError):
            self.drops.drop("udp_send_full")
        except ConnectionRefusedError:
            self.count("udp_port_unreachable")
            self.out.append(self.build.icmp_error(pkt.src_mac, pkt.dst, pkt, icmp.DEST_UNREACH, icmp.PORT_UNREACH))
        except OSError as e:
            self.drops.drop("udp_send_error", error=str(e))

    # -- ICMP --------------------------------------------------------------------------------
    def _icmp(self, pkt, now: float) -> None:
        ip = pkt.ip
        typ, code, ident, seq, payload = icmp.parse_icmp(pkt.frame, ip.start, ip.end)
        if typ != icmp.ECHO_REQUEST:
            self.drops.drop("icmp_type")
            return
        if self.policy.is_local(pkt.dst):
            # another of our own addresses (the DNS address when it is not the gateway)
            self.out.extend(self.build.echo_reply(pkt.src_mac, pkt.dst, pkt.src, ident, seq, payload))
            return
        key = (P_ICMP, pkt.src, ident, pkt.dst, 0)
        flow = self.table.get(key)
        if flow is None:
            d = self.policy.decide(ICMP, pkt.dst, None)
            if isinstance(d, Reject):
                self._reject(pkt, d, "icmp")
                return
            if self.ping_mode == "none":
                self.drops.drop("no_ping_socket")
                return
            if self._admit():
                self.drops.drop("flow_limit")
                return
            sock = None
            host_id = 0
            if self.ping_mode == "ping":
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
                except OSError as e:
                    self.drops.drop("socket_error", error=str(e))
                    return
                sock.setblocking(False)
            else:
                host_id = self._raw_id(socket.inet_aton(d.addr[0]))
            flow = EchoFlow(self, key, pkt.src_mac, d, sock, host_id, now)
            self.table.add(key, flow, now=now)
            if sock is not None:
                self._watch(flow, EPOLLIN)
            else:
                self.raw_ids[(socket.inet_aton(d.addr[0]), host_id)] = flow
                flow.host = f"raw#{host_id}"
            self.count("flows_opened.icmp")
            self.log.info("flow_open", flow=flow.id, proto=ICMP, guest=flow.guest, remote=flow.remote,
                          target=d.addr[0])
        else:
            flow.mac = pkt.src_mac
            self.table.touch(key, now)
        flow.last_quote = bytes(pkt.ip_packet()[:28])
        body = icmp.build_icmp(icmp.ECHO_REQUEST, 0, flow.host_id if flow.sock is None else ident, seq, payload)
        try:
            if flow.sock is not None:
                flow.sock.sendto(body, (flow.target.addr[0], 0))
                if not flow.host:
                    flow.host = _sockname(flow.sock)
            else:
                self.raw.sendto(body, (flow.target.addr[0], 0))
            flow.bytes_out += len(body)
        except (BlockingIOError, InterruptedError):
            self.drops.drop("icmp_send_full")
        except OSError as e:
            code = {errno.EHOSTUNREACH: icmp.HOST_UNREACH, errno.ENETUNREACH: icmp.NET_UNREACH}.get(e.errno)
            if code is not None:
                self.out.append(self.build.icmp_error(pkt.src_mac, pkt.dst, pkt, icmp.DEST_UNREACH, code))
            self.drops.drop("icmp_send_error", error=str(e))

    def _raw_id(self, remote: bytes) -> int:
        for _ in range(65536):
            self.next_raw_id = (self.next_raw_id + 1) & 0xFFFF
            if (remote, self.next_raw_id) not in self.raw_ids:
                return self.next_raw_id
        raise OSError(errno.EAGAIN, "no free ICMP id")

    def _on_raw(self) -> None:
        for _ in range(UDP_READS):
            try:
                data, addr = self.raw.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.drops.drop("raw_recv_error", error=str(e))
                break
            if len(data) < 28:
                continue
            ihl = (data[0] & 15) * 4
            if len(data) < ihl + 8 or data[ihl] != icmp.ECHO_REPLY:
                continue
            (hid,) = struct.unpack_from("!H", data, ihl + 4)
            flow = self.raw_ids.get((data[12:16], hid))
            if flow is not None:
                flow.reply(memoryview(data)[ihl:])
        self._flush()

    # -- TCP ---------------------------------------------------------------------------------
    def _tcp(self, pkt, now: float) -> None:
        l4 = pkt.l4()
        if not self.rx_partial and not tcp_checksum_ok(l4, pkt.src, pkt.dst):
            self.drops.drop("bad_tcp_checksum")
            return
        seg = parse_tcp(l4, verify=False)
        key = (P_TCP, pkt.src, seg.sport, pkt.dst, seg.dport)
        flow = self.table.get(key)
        flags = seg.flags
        if flow is not None:
            if flags & SYN and not flags & ACK and flow.conn.state in (State.TIME_WAIT, State.CLOSED):
                self._close_flow(flow, "reused")  # a new connection on an old 4-tuple
                flow = None
            else:
                flow.conn.on_segment(seg, now)
                if not flow.keepalive and flow.conn.stats.keepalive_probes and flow.sock is not None:
                    flow.reflect_keepalive()
                self.dirty.add(flow)
                return
        if not seg.sport or not seg.dport:
            self.drops.drop("port_zero")
            return
        if flags & (SYN | ACK | RST | FIN) != SYN:
            rst = rst_for(seg)
            if rst is not None:
                self.count("tcp_rst_no_flow")
                self.out_tcp.append(tcp_frame(self.build.eth(pkt.src_mac), pkt.dst, pkt.src, rst, self.build.ident(), True))
            return
        self._tcp_open(pkt, seg, key, now)

    def _tcp_refuse(self, pkt, seg, reason: str) -> None:
        self.count(f"rejected.{reason}")
        rst = rst_for(seg)
        self.out_tcp.append(tcp_frame(self.build.eth(pkt.src_mac), pkt.dst, pkt.src, rst, self.build.ident(), True))

    def _tcp_open(self, pkt, seg, key, now: float) -> None:
        d = self.policy.decide(TCP, pkt.dst, seg.dport)
        if isinstance(d, Reject):
            self._tcp_refuse(pkt, seg, d.reason)
            return
        reason = self._admit(pending=True)
        if reason == "syn_backlog":
            self.drops.drop("syn_backlog")  # like a full listen queue: the guest retries
            return
        if reason:
            self.drops.drop(reason)
            self._tcp_refuse(pkt, seg, reason)
            return
        try:
            sock = socket.socket(d.family, socket.SOCK_STREAM)
        except OSError as e:
            self.drops.drop("socket_error", error=str(e))
            self._tcp_refuse(pkt, seg, "socket_error")
            return
        sock.setblocking(False)
        if d.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mss = self.mtu - 40
        conn = TcpConnection.passive(seg, now=now, isn=self.isn(pkt.dst, seg.dport, pkt.src, seg.sport, now),
                                     mss=mss, max_segment=MAX_SEGMENT, rcv_buf=TCP_RCV_BUF,
                                     snd_buf=TCP_SND_BUF, config=self.tcp_config)
        ihl = pkt.ip.ihl
        quote = bytes(pkt.ip_packet()[: ihl + 8])
        flow = TcpFlow(self, key, pkt.src_mac, d, conn, sock, quote, now)
        self.table.add(key, flow, pending=True)
        self.count("flows_opened.tcp")
        err = sock.connect_ex(d.addr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.tcp_connect_failed(flow, err)
            return
        self._watch(flow, EPOLLOUT)
        flow.connect_timer = self.loop.call_later(self.connect_timeout, lambda: self._connect_timeout(flow))

    def _connect_timeout(self, flow: TcpFlow) -> None:
        if flow.connecting and self.table.get(flow.key) is flow:
            self.tcp_connect_failed(flow, errno.ETIMEDOUT)
            self._flush()

    def tcp_connected(self, flow: TcpFlow) -> None:
        flow.connecting = False
        if flow.connect_timer is not None:
            flow.connect_timer.cancel()
            flow.connect_timer = None
        self.table.connected(flow.key)
        flow.host = _sockname(flow.sock)
        if flow.conn.state is not State.SYN_RECEIVED:  # the guest gave up (RST) meanwhile
            self._close_flow(flow, "guest reset while connecting")
            return
        flow.conn.accept(self.loop.now())
        self.log.info("flow_open", flow=flow.id, proto=TCP, guest=flow.guest, remote=flow.remote,
                      target=flow.target.text(), host=flow.host)
        self._watch(flow, flow.want())
        self.dirty.add(flow)

    def tcp_connect_failed(self, flow: TcpFlow, err: int) -> None:
        """connect() failed: RST (refused and the like) or ICMP unreachable to the guest."""
        if flow.connect_timer is not None:
            flow.connect_timer.cancel()
            flow.connect_timer = None
        code = {errno.EHOSTUNREACH: icmp.HOST_UNREACH, errno.ENETUNREACH: icmp.NET_UNREACH,
                errno.ETIMEDOUT: icmp.HOST_UNREACH, errno.EACCES: icmp.ADMIN_PROHIBITED,
                errno.EPERM: icmp.ADMIN_PROHIBITED}.get(err)
        reason = errno.errorcode.get(err, str(err)).lower()
        self.count(f"connect_failed.{reason}")
        rst = flow.conn.refuse() if flow.conn.state is State.SYN_RECEIVED else None
        if code is None:
            if rst is not None:
                self.out_tcp.append(tcp_frame(flow.eth, flow.src, flow.dst, rst, self.build.ident(), True))
        else:
            self.out.append(self.build.icmp_error(flow.mac, flow.src, None, icmp.DEST_UNREACH, code,
                                                  quote=flow.syn_quote, guest=flow.dst))
        self._close_flow(flow, f"connect: {os.strerror(err)}", quiet=True)

    def tcp_close_sock(self, flow: TcpFlow, linger0: bool = False) -> None:
        sock = flow.sock
        if sock is None:
            return
        self._unwatch(flow)
        if linger0:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        sock.close()
        flow.sock = None

    def _tcp_service(self, flow: TcpFlow, now: float) -> None:
        """After anything happened to a TCP flow: its events, its output, its timer."""
        if self.table.get(flow.key) is not flow:
            return
        conn = flow.conn
        if not flow.connecting:
            for _ in range(4):
                evs = conn.events()
                if not evs:
                    break
                for ev in evs:
                    t = type(ev)
                    if t is DataReadable:
                        flow.pump_to_host()
                    elif t is EndOfStream:
                        flow.guest_eof = True
                        flow.pump_to_host()
                    elif t is Reset:
                        if not flow.reset:
                            flow.reset = f"guest: {ev.reason}"
                        self.tcp_close_sock(flow, linger0=True)
                    elif t is Closed:
                        flow.engine_done = True
            if flow.sock is not None and not flow.host_eof and conn.state in _HOST_READ_STATES \
                    and conn.send_space() > 0 and not flow.mask & EPOLLIN:
                flow.read_host()  # space came back: resume reading the host
            if flow.to_host or conn.readable():
                flow.pump_to_host()
        segs = conn.segments_out(now)
        if segs:
            eth, src, dst, build = flow.eth, flow.src, flow.dst, self.build
            out = self.out_tcp
            for seg in segs:
                out.append(tcp_frame(eth, src, dst, seg, build.ident(), True))
        if flow.engine_done or conn.state is State.CLOSED:
            flow.engine_done = True
            if flow.done_at is None:
                flow.done_at = now
            if flow.sock is None or flow.reset or (not flow.to_host and not conn.readable()):
                self._close_flow(flow, flow.reset or "closed")
                return
        elif flow.sock is not None and flow.host_eof and flow.shut_wr and not flow.to_host:
            self.tcp_close_sock(flow)  # both directions done on the host: free the fd early
        if flow.sock is not None and not flow.connecting:
            self._watch(flow, flow.want())
        deadline = conn.timer()
        if deadline is not None and (flow.timer is None or deadline < flow.timer_at - 0.0005):
            if flow.timer is not None:
                flow.timer.cancel()
            flow.timer_at = deadline
            flow.timer = self.loop.call_at(deadline, lambda: self._tcp_timer(flow))

    def _tcp_timer(self, flow: TcpFlow) -> None:
        flow.timer = None
        if self.table.get(flow.key) is not flow:
            return
        now = self.loop.now()
        deadline = flow.conn.timer()
        if deadline is not None and deadline <= now + 0.0005:
            flow.conn.on_timer(now)
        self.dirty.add(flow)
        self._flush()

    # -- closing -----------------------------------------------------------------------------
    def _close_flow(self, flow, reason: str, removed: bool = False, quiet: bool = False) -> None:
        if not removed and self.table.get(flow.key) is flow:
            self.table.remove(flow.key)
        elif not removed:
            return
        if isinstance(flow, TcpFlow):
            if flow.connect_timer is not None:
                flow.connect_timer.cancel()
            if flow.timer is not None:
                flow.timer.cancel()
                flow.timer = None
            if flow.conn.state is not State.CLOSED and flow.sock is not None and reason != "shutdown":
                rst = flow.conn.abort()
                if rst is not None:
                    self.out_tcp.append(tcp_frame(flow.eth, flow.src, flow.dst, rst, self.build.ident(), True))
            self.tcp_close_sock(flow, linger0=bool(flow.reset) or reason.startswith("internal"))
            self.dirty.discard(flow)
        else:
            self._unwatch(flow)
            if flow.sock is not None:
                flow.sock.close()
                flow.sock = None
            if isinstance(flow, EchoFlow) and flow.sock is None and self.raw is not None:
                self.raw_ids.pop((socket.inet_aton(flow.target.addr[0]), flow.host_id), None)
        self.count(f"flows_closed.{flow.proto}")
        if quiet:  # a connect that failed was never logged as open: no line per refused SYN
            self.log.debug("flow_failed", flow=flow.id, proto=flow.proto, guest=flow.guest,
                           remote=flow.remote, reason=reason)
            return
        self.log.info("flow_close", flow=flow.id, proto=flow.proto, guest=flow.guest, remote=flow.remote,
                      reason=reason, bytes_in=flow.bytes_in, bytes_out=flow.bytes_out,
                      age=round(self.loop.now() - flow.created, 3))

    def _sweep(self) -> None:
        now = self.loop.now()
        for key in self.table.expired(now, min(ICMP_IDLE, self.udp_idle)):
            flow = self.table.get(key)
            timeout = self.udp_idle if flow.proto == UDP else ICMP_IDLE
            if now - self.table.idle[key] >= timeout:
                self._close_flow(flow, "idle")
        for flow in [f for f in self.table.flows.values() if f.proto == TCP and f.done_at is not None]:
            if now - flow.done_at > DRAIN_TIMEOUT:  # the host never took the last bytes
                self._close_flow(flow, "drain timeout")
        self.reasm.expire(now)
        self._flush()

    # -- control -----------------------------------------------------------------------------
    def handle_flows(self, msg) -> dict:
        now = self.loop.now()
        return {"flows": [f.describe(now) for f in self.table.flows.values()]}

    def handle_stats(self, msg) -> dict:
        r = super().handle_stats(msg)
        open_ = {TCP: 0, UDP: 0, ICMP: 0}
        for f in self.table.flows.values():
            open_[f.proto] += 1
        r["counters"]["flows_open"] = len(self.table)
        for k, v in open_.items():
            r["counters"][f"flows_open.{k}"] = v
        r["counters"]["syn_backlog"] = self.table.pending
        for k, v in self.reasm.counters.items():
            r["counters"][f"reassembly.{k}"] = v
        r["max_flows"] = self.max_flows
        r["ping"] = self.ping_mode
        return r


if __name__ == "__main__":
    FlowService.main()
