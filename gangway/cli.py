"""The `gangway` command: up/down/status/ctl for the stack, stats, leases, capture, replay."""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

import zmq

from bus import endpoints, pcap
from bus.client import ControlError, request
from gangway import config as configmod
from gangway import runner


def _run_dir(args) -> Path:
    return Path(args.run_dir or os.environ.get("GANGWAY_RUN") or "run")


def cmd_up(args) -> int:
    try:
        cfg = configmod.load(args.config)
        if args.netns:
            cfg["bridge"]["taps"] = list(dict.fromkeys(cfg["bridge"]["taps"] + args.netns))
        run_dir = _run_dir(args)
        if not args.detach:
            runner.prepare(run_dir, cfg)
            print_qemu_hint(run_dir, cfg)
        return runner.start(run_dir, cfg, foreground=not args.detach)
    except configmod.ConfigError as e:
        print(f"gangway: config error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"gangway: {e}", file=sys.stderr)
        return 1


def print_qemu_hint(run_dir: Path, cfg: dict) -> None:
    sock = (Path(run_dir) / cfg["bridge"]["qemu_socket"]).resolve()
    print("gangway: connect a VM with:\n  qemu-system-x86_64 ... -device virtio-net-pci,netdev=n0 "
          f"-netdev stream,id=n0,server=off,addr.type=unix,addr.path={sock}\n"
          "  (QEMU >= 8.0: add ,reconnect=1 to that -netdev so the VM reconnects when the bridge restarts)",
          flush=True)


def cmd_down(args) -> int:
    runner.stop(_run_dir(args))
    return 0


def cmd_status(args) -> int:
    return runner.supervisorctl(_run_dir(args), "status").returncode


def cmd_ctl(args) -> int:
    return runner.supervisorctl(_run_dir(args), *args.rest).returncode


def cmd_stats(args) -> int:
    run_dir = _run_dir(args)
    out = {}
    for name in runner.services_in_conf():
        try:
            out[name] = request(run_dir, name, "stats", timeout=1.0)
            out[name].pop("v", None)
            out[name].pop("type", None)
        except ControlError as e:
            out[name] = {"error": str(e)}
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


def cmd_leases(args) -> int:
    try:
        r = request(_run_dir(args), "dhcp", "leases")
    except ControlError as e:
        print(f"gangway: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r["leases"], indent=1))
    return 0


def cmd_flows(args) -> int:
    try:
        flows = request(_run_dir(args), "flow", "flows")["flows"]
    except ControlError as e:
        print(f"gangway: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(flows, indent=1))
        return 0
    cols = ("proto", "guest", "remote", "host", "state", "bytes_in", "bytes_out", "age")
    rows = [[str(f.get(c, "")) if c != "age" else f"{float(f.get(c, 0)):.1f}" for c in cols] for f in flows]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 0


def cmd_dns(args) -> int:
    run_dir = _run_dir(args)
    try:
        if args.action == "add":
            if not args.value:
                print("gangway: dns add NAME TYPE VALUE", file=sys.stderr)
                return 2
            fields = {"name": args.name, "rtype": args.rtype.upper(), "value": " ".join(args.value)}
            if args.ttl:
                fields["ttl"] = args.ttl
            request(run_dir, "dns", "dns-add", **fields)
        elif args.action == "rm":
            fields = {"name": args.name}
            if args.rtype:
                fields["rtype"] = args.rtype.upper()
            if args.value:
                fields["value"] = " ".join(args.value)
            r = request(run_dir, "dns", "dns-rm", **fields)
            if not r.get("removed"):
                print(f"gangway: no such record {args.name}", file=sys.stderr)
                return 1
        else:
            for rec in request(run_dir, "dns", "dns-list")["records"]:
                print(json.dumps(rec) if not isinstance(rec, dict) else
                      f"{rec.get('name')}\t{rec.get('ttl', '')}\t{rec.get('type', rec.get('rtype'))}\t{rec.get('value')}")
    except ControlError as e:
        print(f"gangway: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_capture(args) -> int:
    run_dir = _run_dir(args)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100000)
    sub.setsockopt(zmq.SUBSCRIBE, endpoints.CAPTURE_TOPIC)
    sub.connect(endpoints.ipc(run_dir, endpoints.SWITCH_OUT))
    n = 0
    deadline = time.monotonic() + args.duration if args.duration else None
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")
    try:
        w = pcap.PcapWriter(out)
        out.flush()
        if args.ready_file:
            time.sleep(0.3)  # let the subscription reach the switch
            Path(args.ready_file).write_text("ready")
        while args.count is None or n < args.count:
            wait = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not sub.poll(min(wait, 200)):
                continue
            parts = sub.recv_multipart()
            (ts,) = struct.unpack("!d", parts[2])
            for frame in parts[3:]:
                w.write(frame, ts)
                n += 1
                if args.count is not None and n >= args.count:
                    break
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        sub.close()
    print(f"gangway: captured {n} frames", file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    run_dir = _run_dir(args)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(endpoints.ipc(run_dir, endpoints.SWITCH_IN))
    port = args.port.encode()
    if not port.startswith((b"g:", b"s:")):
        port = b"g:" + port
    n = 0
    try:
        with open(args.file, "rb") as f:
            for _ts, frame in pcap.read_pcap(f):
                push.send_multipart([port, frame])
                n += 1
                if args.rate:
                    time.sleep(1.0 / args.rate)
    except (pcap.PcapError, OSError) as e:
        print(f"gangway: replay: {e}", file=sys.stderr)
        return 1
    finally:
        push.close()
    print(f"gangway: replayed {n} frames as port {port.decode()}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gangway", description=__doc__)
    p.add_argument("--run-dir", help="run directory (default ./run or $GANGWAY_RUN)")
    sp = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help_):
        s = sp.add_parser(name, help=help_)
        s.add_argument("--run-dir", default=argparse.SUPPRESS, help="run directory")
        s.set_defaults(fn=fn)
        return s

    s = add("up", cmd_up, "start the stack (foreground unless -d)")
    s.add_argument("-d", "--detach", action="store_true", help="run in the background")
    s.add_argument("--config", help="TOML config merged over configs/default.toml")
    s.add_argument("--netns", action="append", default=[], help="attach a TAP eth0 in this namespace")
    add("down", cmd_down, "stop the stack and remove what up created")
    add("status", cmd_status, "state of each service")
    s = add("ctl", cmd_ctl, "run supervisorctl on this run's supervisord")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    add("stats", cmd_stats, "per-service counters")
    add("leases", cmd_leases, "DHCP leases")
    s = add("flows", cmd_flows, "open guest flows (TCP, UDP, ICMP)")
    s.add_argument("--json", action="store_true")
    s = add("dns", cmd_dns, "runtime DNS records: add NAME TYPE VALUE | rm NAME [TYPE [VALUE]] | list")
    s.add_argument("action", choices=["add", "rm", "list"])
    s.add_argument("name", nargs="?")
    s.add_argument("rtype", nargs="?")
    s.add_argument("value", nargs="*")
    s.add_argument("--ttl", type=int)
    s = add("capture", cmd_capture, "write frames crossing the switch to a pcap")
    s.add_argument("-o", "--output", required=True, help="pcap file, or - for stdout")
    s.add_argument("--count", type=int, help="stop after N frames")
    s.add_argument("--duration", type=float, help="stop after S seconds")
    s.add_argument("--ready-file", help=argparse.SUPPRESS)
    s = add("replay", cmd_replay, "push a capture's frames into the switch")
    s.add_argument("file")
    s.add_argument("--port", default="g:replay", help="port name the frames come from")
    s.add_argument("--rate", type=float, default=0, help="frames per second (default: as fast as possible)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
