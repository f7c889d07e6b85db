"""Side-by-side benchmarks: gangway against slirp4netns and pasta, same guest kind, same run.

Each peer gets its own network namespace (the kernel's stack behind a TAP); iperf3's server
runs on host loopback and the guest reaches it through the peer's host mapping (gangway
192.168.65.254, slirp4netns and pasta 10.0.2.2). Results are reported as ratios to the peers
measured in the same run, since the machine is shared and noisy.

Usage: python -m bench.run [--seconds 5] [--mtu 1500] [--peers gangway,slirp4netns,pasta]
Traffic goes only to 127.0.0.1 and namespaces this script creates; everything is removed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

from tests.harness import Guest, Stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def iperf_server():
    port = free_port()
    p = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield port
    finally:
        p.kill()
        p.wait()


def iperf(guest: Guest, host: str, port: int, seconds: float, reverse: bool) -> float:
    """Gbit/s received, or 0.0 when the run failed."""
    args = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    r = guest.run(*args, timeout=seconds + 30)
    try:
        data = json.loads(r.stdout)
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        return 0.0


@contextmanager
def gangway_guest(mtu: int):
    g = Guest("bgw")
    stack = Stack({"network": {"mtu": mtu}})
    try:
        stack.up(netns=[g.name])
        g.wait_link()
        g.dhcp()
        yield g, "192.168.65.254"
    finally:
        stack.cleanup()
        g.close()


@contextmanager
def blackhole_10_0_2():
    subprocess.run(["ip", "route", "replace", "blackhole", "10.0.2.0/24"], check=False)
    try:
        yield
    finally:
        subprocess.run(["ip", "route", "del", "blackhole", "10.0.2.0/24"], check=False)


@contextmanager
def peer_guest(name: str, prefix: str, argv):
    """A namespace guest configured by a peer process (argv: a function of the netns name)."""
    g = Guest(prefix)
    p = subprocess.Popen(argv(g.name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while "10.0.2.100" not in g.run("ip", "-4", "addr").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not configure the namespace")
            time.sleep(0.1)
        yield g, "10.0.2.2"
    finally:
        p.kill()
        p.wait()
        g.close()


def slirp_guest(mtu: int):
    return peer_guest("slirp4netns", "bsl", lambda ns: ["slirp4netns", "--configure", f"--mtu={mtu}",
                                                          "--netns-type=path", f"/run/netns/{ns}", "tap0"])


def pasta_guest(mtu: int):
    return peer_guest("pasta", "bpa", lambda ns: ["pasta", "-f", "--runas", "0", "--config-net", "-4", "-a", "10.0.2.100",
                                                  "-n", "24", "-g", "10.0.2.2", "-m", str(mtu), "--netns", f"/run/netns/{ns}"])


PEERS = {"gangway": gangway_guest, "slirp4netns": slirp_guest, "pasta": pasta_guest}
BINARIES = {"slirp4netns": "slirp4netns", "pasta": "pasta"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--peers", default="gangway,slirp4netns,pasta")
    ap.add_argument("--json", help="write results here too")
    args = ap.parse_args(argv)
    results: dict[str, dict] = {}
    with blackhole_10_0_2(), iperf_server() as port:
        for name in args.peers.split(","):
            if name in BINARIES and shutil.which(BINARIES[name]) is None:
                print(f"skip {name}: not installed", file=sys.stderr)
                continue
            with PEERS[name](args.mtu) as (guest, host):
                up = iperf(guest, host, port, args.seconds, reverse=False)
                down = iperf(guest, host, port, args.seconds, reverse=True)
                results[name] = {"guest_to_host_gbps": round(up, 3), "host_to_guest_gbps": round(down, 3)}
                print(f"{name:12s} guest->host {up:7.3f} Gbit/s   host->guest {down:7.3f} Gbit/s", flush=True)
    base = results.get("gangway")
    if base:
        for name, r in results.items():
            if name == "gangway":
                continue
            for k in ("guest_to_host_gbps", "host_to_guest_gbps"):
                if r[k]:
                    print(f"gangway/{name} {k}: {base[k] / r[k]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mtu": args.mtu, "seconds": args.seconds, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
