"""The switch service: binds the bus (PULL in, XPUB out), runs SwitchCore on every frame,
republishes events, and feeds a pcap capture only while one is attached."""
from __future__ import annotations

import struct
import time

import zmq

from bus import endpoints
from engine.switch import SwitchCore
from services.common import MAX_BATCH, PARTIAL, Service
from wire import vnet
from wire.ethernet import mac_bytes, mac_str

_TS = struct.Struct("!d")


class SwitchService(Service):
    name = "switch"
    needs_bus = False

    def __init__(self, run_dir, cfg=None):
        super().__init__(run_dir, cfg)
        net, sw = self.cfg["network"], self.cfg["switch"]
        self.core = SwitchCore(gateway=net["gateway"], gateway_mac=mac_bytes(net["gateway_mac"]),
                               host_alias=net["host_alias"], dns=net["dns"], subnet=net["subnet"],
                               mac_table_size=sw["mac_table_size"], mac_ttl=sw["mac_ttl"])
        self.core.counters = self.counters
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 20000)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.SNDHWM, 20000)
        self.xpub.setsockopt(zmq.LINGER, 0)
        for rel, sock in ((endpoints.SWITCH_IN, self.pull), (endpoints.SWITCH_OUT, self.xpub)):
            path = endpoints.run_path(self.run_dir, rel)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            sock.bind(endpoints.ipc(self.run_dir, rel))
        self.capturing = 0
        self.loop.add_reader(self.pull, self._on_pull)
        self.loop.add_reader(self.xpub, self._on_xpub)

    def _on_xpub(self) -> None:
        while True:
            try:
                msg = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg:
                continue
            subscribed, topic = msg[0] == 1, msg[1:]
            if topic == endpoints.CAPTURE_TOPIC:
                self.capturing = 1 if subscribed else 0
                self.log.info("capture_attached" if subscribed else "capture_detached")
                continue
            if not topic.endswith(b"\0"):
                continue
            port = topic[:-1]
            if subscribed:
                self.core.attach(port)
                self.log.info("port_attached", port=port.decode(errors="replace"))
            else:
                self.core.detach(port)
                self.log.info("port_detached", port=port.decode(errors="replace"))

    def _on_pull(self) -> None:
        # Frames are received and forwarded as zmq.Frame objects: a 64 KiB segment crosses the
        # switch without being copied (the core reads it through a memoryview).
        out: dict[tuple, list] = {}  # (destination, partial) -> frames
        core, now = self.core, time.monotonic()
        count = self.counters
        for _ in range(128):
            try:
                parts = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            source = parts[0].bytes
            if source.startswith(endpoints.EVENT_PREFIX):
                self.xpub.send_multipart(parts, zmq.NOBLOCK, copy=False)
                continue
            partial = len(parts) > 1 and len(parts[1]) == 0
            frames = parts[2:] if partial else parts[1:]
            count["frames_in"] = count.get("frames_in", 0) + len(frames)
            if self.capturing:
                self._capture(source, [f.buffer for f in frames], partial)
            for zframe in frames:
                frame = zframe.buffer
                try:
                    results = core.handle(source, frame, now)
                except Exception as e:  # never die on a frame
                    self.drops.drop("internal_error", error=repr(e))
                    continue
                for dest, f in results:
                    if f is frame:
                        out.setdefault((dest, partial), []).append(zframe)
                    else:  # answered by the switch itself (ARP, ping): full checksums
                        out.setdefault((dest, False), []).append(f)
                        if self.capturing:
                            self._capture(b"switch", [f], False)
        self._flush(out)

    def _capture(self, source: bytes, frames: list, partial: bool) -> None:
        if partial:  # the pcap gets real checksums; this costs only while capturing
            frames = [vnet.complete_partial(f) for f in frames]
        try:
            self.xpub.send_multipart([endpoints.CAPTURE_TOPIC, source, _TS.pack(time.time()), *frames], zmq.NOBLOCK)
        except zmq.Again:
            self.drops.drop("capture_full")

    def _flush(self, out: dict) -> None:
        n = 0
        for (dest, partial), frames in out.items():
            n += len(frames)
            head = [endpoints.topic(dest), PARTIAL] if partial else [endpoints.topic(dest)]
            for i in range(0, len(frames), MAX_BATCH):
                try:
                    self.xpub.send_multipart([*head, *frames[i : i + MAX_BATCH]], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    self.drops.drop("bus_full")
        self.counters["frames_out"] = self.counters.get("frames_out", 0) + n

    def handle_stats(self, msg) -> dict:
        r = super().handle_stats(msg)
        r["ports"] = sorted(p.decode() for p in self.core.guest_ports | self.core.services)
        r["macs"] = {mac_str(m): p.decode() for m, (p, _) in self.core.mac_table.items()}
        return r


if __name__ == "__main__":
    SwitchService.main()
