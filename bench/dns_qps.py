"""DNS queries per second from a namespace guest through gangway, cached and uncached, next to
the same client asking the test upstream directly from the host (the ceiling).

The upstream is a dnslib server on 127.0.0.77 started here; nothing else is queried. Each
measurement is bounded in count and time.

Usage: python -m bench.dns_qps [--count 2000] [--window 32]
"""
from __future__ import annotations

import argparse
import json
import sys

from tests.dnsupstream import Upstream
from tests.harness import Guest, Stack

CLIENT = r'''
import json, os, socket, struct, sys, time
server, port, names, count, window, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
def q(i, name):
    h = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
    return h + b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((server, port)); s.settimeout(2)
sent = got = 0; lat = []; t0 = time.monotonic(); pending = {}
while got < count and time.monotonic() - t0 < limit:
    while sent < count and len(pending) < window:
        name = names if names != "unique" else f"u{sent}-{os.getpid()}.example.test"
        s.send(q(sent, name)); pending[sent & 0xFFFF] = time.monotonic(); sent += 1
    try:
        data = s.recv(4096)
    except socket.timeout:
        pending.clear(); continue
    i = struct.unpack_from("!H", data)[0]
    if i in pending:
        lat.append(time.monotonic() - pending.pop(i)); got += 1
el = time.monotonic() - t0
lat.sort()
print(json.dumps({"qps": got / el, "answered": got, "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
                  "p99_ms": 1000 * lat[int(len(lat) * .99)] if lat else None}))
'''


def run_client(runner, server: str, port: int, names: str, count: int, window: int) -> dict:
    r = runner(sys.executable if runner is None else "python3", "-c", CLIENT, server, str(port), names, str(count),
               str(window), "30")
    return json.loads(r.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--window", type=int, default=32)
    args = ap.parse_args(argv)
    up = Upstream("127.0.0.77", "bench", ttl=300)
    guest = Guest("bdn")
    stack = Stack({"dns": {"mode": "upstream", "upstreams": [up.hostport]}})
    results = {}
    try:
        import subprocess

        def host(*cmd):
            return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)

        results["direct_upstream"] = run_client(host, "127.0.0.77", up.port, "www.example.test", args.count, args.window)
        stack.up(netns=[guest.name])
        guest.wait_link()
        guest.dhcp()
        results["gangway_cached"] = run_client(guest.run, "192.168.65.1", 53, "www.example.test", args.count, args.window)
        results["gangway_local_name"] = run_client(guest.run, "192.168.65.1", 53, "host.gangway.internal", args.count, args.window)
        results["gangway_uncached"] = run_client(guest.run, "192.168.65.1", 53, "unique", args.count // 2, args.window)
    finally:
        stack.cleanup()
        guest.close()
        up.stop()
    base = results["direct_upstream"]["qps"]
    for k, v in results.items():
        print(f"{k:20s} {v['qps']:8.0f} q/s  p50 {v['p50_ms']:.2f} ms  p99 {v['p99_ms']:.2f} ms  ({v['qps'] / base:.2f}x direct)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
