"""The flow service in-process (fake switch, real host sockets on 127.0.0.1)."""
from __future__ import annotations

import socket
import threading

import pytest

import services.flow as flowmod
from engine.tcp.events import Closed, Connected, EndOfStream, Reset
from wire import icmp
from wire.tcp import RST, ACK, SYN, Segment, parse_tcp

from test_flow_rig import GATEWAY, GUEST_IP, HOST_ALIAS, GuestTcp, Rig, closed_port, ip4, listener, parse_out


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def udp_echo_server():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            try:
                s.sendto(data.upper(), addr)
            except OSError:  # the test closed the socket meanwhile
                return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return s, stop


def test_udp_echo_through_host_alias(rig):
    srv, stop = udp_echo_server()
    try:
        port = srv.getsockname()[1]
        rig.feed(rig.udp_frame(HOST_ALIAS, 5353, port, b"hello"))
        assert rig.run(lambda: rig.sent)
        ip, l4 = parse_out(rig.take()[0])
        assert ip.proto == 17 and ip.src == HOST_ALIAS and ip.dst == GUEST_IP
        from wire.udp import parse_udp
        sport, dport, payload = parse_udp(l4, 0, len(l4), ip.src, ip.dst)
        assert (sport, dport, bytes(payload)) == (port, 5353, b"HELLO")
        flows = rig.svc.handle_flows({})["flows"]
        assert flows[0]["proto"] == "udp" and flows[0]["guest"] == "192.168.65.50:5353"
        assert flows[0]["remote"] == f"192.168.65.254:{port}" and flows[0]["host"].startswith("127.0.0.1:")
    finally:
        stop.set()
        srv.close()


def test_udp_large_reply_is_fragmented_and_large_request_reassembled(rig):
    srv, stop = udp_echo_server()
    try:
        port = srv.getsockname()[1]
        big = bytes(range(256)) * 40  # 10240 bytes: more than the MTU
        whole = rig.udp_frame(HOST_ALIAS, 5000, port, big)
        # fragment it as a guest kernel would
        frags = rig.svc.build.fragments(rig.gw_mac, GUEST_IP, HOST_ALIAS, 17, whole[34:])
        guest_frags = [rig.eth() + f[14:] for f in frags]
        rig.feed(*guest_frags)
        assert rig.run(lambda: len(rig.sent) >= len(frags))
        out = rig.take()
        assert all(len(f) <= 1514 for f in out)
        from engine.flow.frag import Reassembler
        from wire import ipv4
        r = Reassembler()
        result = None
        for f in out:
            ip = ipv4.parse_ipv4(f, 14)
            assert ip.is_fragment
            result = r.add(f, ip, 0.0) or result
        assert result is not None
        assert result[14 + 28:] == big.upper()
    finally:
        stop.set()
        srv.close()


def test_udp_closed_port_gets_port_unreachable(rig):
    port = closed_port()
    rig.feed(rig.udp_frame(HOST_ALIAS, 6000, port, b"anyone?"))
    assert rig.run(lambda: rig.sent)
    ip, l4 = parse_out(rig.take()[0])
    assert ip.proto == 1 and l4[0] == icmp.DEST_UNREACH and l4[1] == icmp.PORT_UNREACH
    # the quote names the guest's datagram
    q = bytes(l4[8:])
    assert q[12:16] == GUEST_IP and q[16:20] == HOST_ALIAS
    assert int.from_bytes(q[20:22], "big") == 6000 and int.from_bytes(q[22:24], "big") == port


def test_udp_gateway_unmapped_port_unreachable_and_denied_admin_prohibited(tmp_path):
    r = Rig(tmp_path, flow={"deny": ["10.0.0.0/8"]})
    try:
        r.feed(r.udp_frame(GATEWAY, 6000, 9999, b"x"))
        ip, l4 = parse_out(r.take()[0])
        assert (l4[0], l4[1]) == (3, 3) and ip.src == GATEWAY
        r.feed(r.udp_frame(ip4("10.1.2.3"), 6000, 9999, b"x"))
        ip, l4 = parse_out(r.take()[0])
        assert (l4[0], l4[1]) == (3, 13)
        r.feed(r.udp_frame(ip4("169.254.169.254"), 6000, 80, b"x"))
        ip, l4 = parse_out(r.take()[0])
        assert (l4[0], l4[1]) == (3, 13)
        r.feed(r.ping_frame(ip4("10.9.9.9"), 7, 1))
        ip, l4 = parse_out(r.take()[0])
        assert (l4[0], l4[1]) == (3, 13)
        assert r.svc.counters["rejected.denied"] == 2
        assert len(r.svc.table) == 0
    finally:
        r.close()


def test_ping_host_alias_keeps_id_and_seq(rig):
    if rig.svc.ping_mode == "none":
        pytest.skip("neither ping sockets nor raw sockets are permitted")
    rig.feed(rig.ping_frame(HOST_ALIAS, 0x4242, 7, b"payload!" * 7))
    assert rig.run(lambda: rig.sent)
    ip, l4 = parse_out(rig.take()[0])
    typ, code, ident, seq, payload = icmp.parse_icmp(l4, 0, len(l4))
    assert (typ, ident, seq, bytes(payload)) == (icmp.ECHO_REPLY, 0x4242, 7, b"payload!" * 7)
    assert ip.src == HOST_ALIAS and ip.dst == GUEST_IP


def test_tcp_connect_data_both_ways_and_half_close(rig):
    ls = listener()
    port = ls.getsockname()[1]
    g = GuestTcp(rig, HOST_ALIAS, port)
    assert g.run(lambda: Connected() in g.events)
    ls.settimeout(5)
    conn, _ = ls.accept()
    conn.setblocking(False)
    got = bytearray()

    def host_read(n):
        try:
            while True:
                d = conn.recv(65536)
                if not d:
                    got.extend(b"<EOF>")
                    break
                got.extend(d)
        except BlockingIOError:
            pass
        return len(got) >= n

    big = bytes(range(256)) * 4000  # 1 MB: more than every buffer on the way
    sent = 0
    while sent < len(big):
        sent += g.conn.send(memoryview(big)[sent:])
        assert g.run(lambda: host_read(sent) and g.conn.send_space() > 0, timeout=5)
    assert got == big
    out = b"pong" * 100000
    n = 0

    def host_write():
        nonlocal n
        try:
            n += conn.send(out[n:])
        except BlockingIOError:
            pass
        return len(g.data) >= len(out)

    assert g.run(host_write)
    assert g.data == out
    # guest half-closes: host reads EOF, can still send
    g.conn.close()
    got.clear()
    assert g.run(lambda: host_read(5) and got.endswith(b"<EOF>"))
    assert got == b"<EOF>"
    conn.send(b"after")
    assert g.run(lambda: g.data.endswith(b"after"))
    conn.close()
    assert g.run(lambda: EndOfStream() in g.events and Closed() in g.events)
    assert rig.run(lambda: len(rig.svc.table) == 0)
    ls.close()


def test_tcp_refused_gets_rst(rig):
    port = closed_port()
    g = GuestTcp(rig, HOST_ALIAS, port)
    assert g.run(lambda: Reset("refused") in g.events, timeout=3)
    assert len(rig.svc.table) == 0


def test_tcp_gateway_unmapped_port_rst(rig):
    g = GuestTcp(rig, GATEWAY, 4444)
    assert g.run(lambda: Reset("refused") in g.events, timeout=3)
    assert rig.svc.counters["rejected.closed"] == 1


def test_tcp_host_reset_reaches_guest(rig):
    ls = listener()
    g = GuestTcp(rig, HOST_ALIAS, ls.getsockname()[1])
    ls.settimeout(5)
    assert g.run(lambda: Connected() in g.events)
    conn, _ = ls.accept()
    import struct
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    assert g.run(lambda: Reset("reset") in g.events)
    assert rig.run(lambda: len(rig.svc.table) == 0)
    ls.close()


def test_tcp_guest_reset_resets_host(rig):
    ls = listener()
    g = GuestTcp(rig, HOST_ALIAS, ls.getsockname()[1])
    ls.settimeout(5)
    assert g.run(lambda: Connected() in g.events)
    conn, _ = ls.accept()
    rst = g.conn.abort()
    rig.feed(rig.tcp_frame(HOST_ALIAS, rst))
    conn.settimeout(5)
    with pytest.raises(ConnectionResetError):
        conn.recv(10)
    assert len(rig.svc.table) == 0
    ls.close()


def test_unknown_flow_gets_rst(rig):
    seg = Segment(40001, 80, 1000, 5555, ACK, 1000, b"data")
    rig.feed(rig.tcp_frame(HOST_ALIAS, seg))
    ip, l4 = parse_out(rig.take()[0])
    rst = parse_tcp(l4, src=ip.src, dst=ip.dst)
    assert rst.flags & RST and rst.seq == 5555 and (rst.sport, rst.dport) == (80, 40001)
    # a RST for an unknown flow is never answered
    rig.feed(rig.tcp_frame(HOST_ALIAS, Segment(40001, 80, 1000, 0, RST, 0)))
    assert rig.take() == []


def test_ipv6_and_garbage_are_counted(rig):
    rig.feed(b"\x00" * 6 + b"\x01" * 6 + b"\x86\xdd" + b"\x60" + b"\x00" * 60, b"short", rig.eth() + b"\x45" + b"\x00" * 30)
    c = rig.svc.counters
    assert c["drop.ipv6"] == 1 and c["drop.malformed"] == 2


def test_udp_idle_timeout_with_injected_clock(tmp_path):
    r = Rig(tmp_path, flow={"udp_idle_timeout": 90.0})
    clock = [1000.0]
    r.svc.loop.now = lambda: clock[0]
    try:
        srv, stop = udp_echo_server()
        port = srv.getsockname()[1]
        r.feed(r.udp_frame(HOST_ALIAS, 5000, port, b"a"))
        r.feed(r.udp_frame(HOST_ALIAS, 5001, port, b"b"))
        assert len(r.svc.table) == 2
        clock[0] += 60
        r.feed(r.udp_frame(HOST_ALIAS, 5001, port, b"b"))  # keeps 5001 alive
        clock[0] += 31
        r.svc._sweep()
        assert [f["guest"] for f in r.svc.handle_flows({})["flows"]] == ["192.168.65.50:5001"]
        clock[0] += 60
        r.svc._sweep()
        assert len(r.svc.table) == 0
        assert r.svc.counters["flows_closed.udp"] == 2
        stop.set()
        srv.close()
    finally:
        r.close()


def test_flow_limit_evicts_unanswered_udp_and_refuses_tcp(tmp_path):
    r = Rig(tmp_path, flow={"max_flows": 16})
    try:
        ls = listener()
        g = GuestTcp(r, HOST_ALIAS, ls.getsockname()[1])
        assert g.run(lambda: Connected() in g.events)
        for port in range(30000, 30040):  # unanswered UDP: each evicts the oldest
            r.feed(r.udp_frame(HOST_ALIAS, port, closed_port(), b"x"))
        assert len(r.svc.table) == 16
        assert r.svc.counters["evicted"] >= 24
        assert any(f["proto"] == "tcp" for f in r.svc.handle_flows({})["flows"])
        st = r.svc.handle_stats({})["counters"]
        assert st["flows_open"] == 16 and st["flows_open.tcp"] == 1
        ls.close()
    finally:
        r.close()


def test_ping_sockets_in_a_namespace_that_permits_them(tmp_path):
    """ping_group_range is per network namespace: test the ping-socket path in a fresh one."""
    import os
    import subprocess
    import uuid

    from gangway import netns

    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"gwtping{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with netns.entered(name):
            r = Rig(tmp_path)
            try:
                assert r.svc.ping_mode == "ping"
                r.feed(r.ping_frame(HOST_ALIAS, 0x1234, 9, b"abc" * 10))
                assert r.run(lambda: r.sent)
                ip, l4 = parse_out(r.take()[0])
                typ, code, ident, seq, payload = icmp.parse_icmp(l4, 0, len(l4))
                assert (typ, ident, seq, bytes(payload)) == (icmp.ECHO_REPLY, 0x1234, 9, b"abc" * 10)
                assert r.svc.handle_flows({})["flows"][0]["host"].startswith("0.0.0.0:")
            finally:
                r.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_guest_zero_window_pauses_host_reads_then_resumes(rig):
    """End-to-end flow control: a guest that stops reading closes its window; flow stops
    reading the host socket (bounded memory), and everything arrives once it reads again."""
    ls = listener()
    g = GuestTcp(rig, HOST_ALIAS, ls.getsockname()[1], rcv_buf=32 * 1024)
    assert g.run(lambda: Connected() in g.events)
    conn, _ = ls.accept()
    conn.setblocking(False)
    out = bytes(range(256)) * 65536  # 16 MiB: more than the socket buffers on loopback
    sent = 0
    g.reading = False

    def host_write():
        nonlocal sent
        try:
            sent += conn.send(out[sent:])
        except BlockingIOError:
            pass
        return False

    g.run(host_write, timeout=1.0)
    flow = next(iter(rig.svc.table.flows.values()))
    assert sent < len(out)  # the host is blocked: nobody reads on the way
    assert flow.conn.send_space() == 0 and not flow.mask & 1  # not reading the host socket
    assert len(flow.conn._sbuf) <= flowmod.TCP_SND_BUF + flowmod.READ_CHUNK  # bounded
    g.reading = True
    assert g.run(lambda: host_write() or len(g.data) == len(out), timeout=20)
    assert g.data == out
    conn.close()
    ls.close()


def test_guest_syn_retransmits_while_connecting_are_ignored(rig):
    ls = listener()
    port = ls.getsockname()[1]
    syn = Segment(40123, port, 1000, 0, SYN, 65535, mss=1460)
    rig.svc.on_frames([rig.tcp_frame(HOST_ALIAS, syn)] * 3)
    assert len(rig.svc.table) == 1
    assert rig.run(lambda: rig.sent)
    synacks = [parse_tcp(parse_out(f)[1]) for f in rig.take()]
    assert len(synacks) == 1 and synacks[0].flags == SYN | ACK and synacks[0].ack == 1001
    ls.close()


def test_connect_timeout_gives_icmp_host_unreachable_quoting_the_syn(tmp_path):
    r = Rig(tmp_path, flow={"connect_timeout": 0.3})
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    fillers = [socket.socket() for _ in range(4)]
    for c in fillers:
        c.setblocking(False)
        c.connect_ex(ls.getsockname())
    try:
        port = ls.getsockname()[1]
        syn = Segment(40999, port, 777, 0, SYN, 65535, mss=1460)
        r.feed(r.tcp_frame(HOST_ALIAS, syn))
        assert r.run(lambda: r.sent, timeout=3)
        ip, l4 = parse_out(r.take()[0])
        assert ip.proto == 1 and (l4[0], l4[1]) == (3, 1)
        q = bytes(l4[8:])
        assert int.from_bytes(q[20:22], "big") == 40999 and int.from_bytes(q[24:28], "big") == 777
        assert len(r.svc.table) == 0 and r.svc.counters["connect_failed.etimedout"] == 1
    finally:
        for c in fillers:
            c.close()
        ls.close()
        r.close()
