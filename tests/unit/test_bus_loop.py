"""bus.loop.Loop: readers, writers, timers; a socket error wakes its reader (loopback only)."""
import socket
import time

from bus.loop import Loop


def test_timers_fire_in_order_and_cancel():
    loop = Loop()
    seen = []
    loop.call_later(0.02, lambda: seen.append("b"))
    loop.call_later(0.01, lambda: seen.append("a"))
    t = loop.call_later(0.015, lambda: seen.append("x"))
    t.cancel()
    deadline = time.monotonic() + 2
    while len(seen) < 2 and time.monotonic() < deadline:
        loop.run_once(max_wait=0.05)
    assert seen == ["a", "b"]


def test_reader_called_for_data():
    loop = Loop()
    a, b = socket.socketpair()
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(100)))
    b.send(b"hi")
    loop.run_once(max_wait=1)
    assert got == [b"hi"]
    loop.remove_reader(a)
    b.send(b"again")
    loop.run_once(max_wait=0.05)
    assert got == [b"hi"]
    a.close()
    b.close()


def test_icmp_port_unreachable_wakes_the_reader_and_is_cleared():
    """A connected UDP socket's pending ECONNREFUSED is POLLERR only (no POLLIN): the reader
    must still run (and its recv clears the error), else poll reports it again forever."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()
    probe.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect(closed)
    errors = []

    def on_read():
        try:
            s.recv(100)
        except ConnectionRefusedError as e:
            errors.append(e)
        except BlockingIOError:
            pass

    loop = Loop()
    loop.add_reader(s, on_read)
    s.send(b"anyone?")
    deadline = time.monotonic() + 2
    while not errors and time.monotonic() < deadline:
        loop.run_once(max_wait=0.1)
    assert len(errors) == 1
    # cleared: the next poll waits instead of returning at once
    t0 = time.monotonic()
    loop.run_once(max_wait=0.05)
    assert len(errors) == 1 and time.monotonic() - t0 >= 0.04
    s.close()
