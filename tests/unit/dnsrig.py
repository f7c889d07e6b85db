"""A DnsServer for unit tests: run on a bus.loop.Loop in a background thread, with UDP and
TCP listeners on 127.0.0.1, a clock tests can jump, and a log that records events."""
import socket
import threading
import time

from dnslib import EDNS0, DNSRecord

from bus.loop import Loop
from services.dnsserver import DnsServer

NET = dict(gateway="192.168.65.1", host_alias="192.168.65.254", subnet="192.168.65.0/24")


class Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))


class Running:
    """A DnsServer on a Loop stepped in a background thread, with UDP and TCP listeners."""

    def __init__(self, config, state_dir, resolve=None):
        self.loop = Loop()
        self.offset = 0.0
        self.loop.now = lambda: time.monotonic() + self.offset  # tests can jump the clock
        self.log = Log()
        self.srv = DnsServer(self.loop, config, **NET, state_dir=state_dir, log=self.log, resolve=resolve)
        self.srv.resolv_check_interval = 0.0
        self.port = self.srv.listen_udp(("127.0.0.1", 0))
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        self.tcp_port = tcp.getsockname()[1]
        tcp.close()
        self.srv.listen_tcp(("127.0.0.1", self.tcp_port))
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            self.loop.run_once(max_wait=0.02)

    def ask(self, name, qtype="A", tcp=False, edns=None, timeout=3.0, do=False, cd=False) -> DNSRecord:
        q = DNSRecord.question(name, qtype)
        if edns or do:
            q.add_ar(EDNS0(udp_len=edns or 1232, flags="do" if do else ""))
        q.header.cd = int(cd)
        data = q.send("127.0.0.1", self.tcp_port if tcp else self.port, tcp=tcp, timeout=timeout)
        r = DNSRecord.parse(data)
        assert r.header.id == q.header.id
        return r

    def settle(self, key: str, want, wait: float = 1.0) -> int:
        """The counter ``key`` once it equals ``want`` (the loop thread may lag a little)."""
        end = time.monotonic() + wait
        while self.srv.counters.get(key) != want and time.monotonic() < end:
            time.sleep(0.01)
        return self.srv.counters.get(key)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(2)
        self.srv.close()
