"""What every service shares: arguments, config, logging, the bus sockets, the control socket.

A service subclasses ``Service``, sets ``name`` and ``subscribe`` (topics it wants from the
switch), implements ``on_frames(frames)`` and optional ``handle_<type>`` control handlers,
then ``main()`` runs it until SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

import zmq

from bus import endpoints, envelope
from bus.loop import Loop
from gangway import config as configmod
from gangway import logs

MAX_BATCH = 64  # frames per bus message
PARTIAL = b""  # marker part: the frames after it carry partial TCP checksums


class Service:
    name = "service"
    subscribe: tuple = ()  # topics (without the NUL) to receive from the switch
    needs_bus = True

    def __init__(self, run_dir: Path, cfg: dict | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg if cfg is not None else configmod.load_effective(self.run_dir)
        self.log = logs.setup(self.name, self.cfg.get("log", {}).get("level", "info"))
        self.counters: dict = {}
        self.drops = logs.OnceLogger(self.log, self.counters)
        self.loop = Loop()
        self.ctx = zmq.Context.instance()
        self.port = f"s:{self.name}".encode()
        self.push = self.sub = None
        self.rx_partial = False
        if self.needs_bus:
            self.push = self.ctx.socket(zmq.PUSH)
            self.push.setsockopt(zmq.SNDHWM, 10000)
            self.push.setsockopt(zmq.LINGER, 0)
            self.push.connect(endpoints.ipc(self.run_dir, endpoints.SWITCH_IN))
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.RCVHWM, 10000)
            self.sub.setsockopt(zmq.LINGER, 0)
            for t in self.subscribe:
                # events are published under their bare topic; ports and services NUL-terminated
                self.sub.setsockopt(zmq.SUBSCRIBE, t if t.startswith(endpoints.EVENT_PREFIX) else endpoints.topic(t))
            self.sub.connect(endpoints.ipc(self.run_dir, endpoints.SWITCH_OUT))
            self.loop.add_reader(self.sub, self._on_sub)
        self.ctl = self.ctx.socket(zmq.REP)
        self.ctl.setsockopt(zmq.LINGER, 0)
        ctl_path = self.run_dir / "ctl" / self.name
        try:
            ctl_path.unlink()
        except FileNotFoundError:
            pass
        self.ctl.bind(endpoints.ctl(self.run_dir, self.name))
        self.loop.add_reader(self.ctl, self._on_ctl)

    # -- frames --------------------------------------------------------------------------
    def _on_sub(self) -> None:
        sub = self.sub
        for _ in range(256):
            try:
                parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # the topic as bytes, frames as memoryviews of ZeroMQ's own buffers (no copy)
            self.on_message([parts[0].bytes, *(p.buffer for p in parts[1:])])

    def on_message(self, parts: list) -> None:
        """[topic, frame, ...] from the switch (frames are memoryviews); default: on_frames.

        A zero-length part right after the topic marks the frames as checksum-partial TCP
        (see bus/endpoints.py); ``self.rx_partial`` tells on_frames."""
        if len(parts) > 1 and not parts[1]:
            self.rx_partial = True
            self.on_frames(parts[2:])
        else:
            self.rx_partial = False
            self.on_frames(parts[1:])

    def on_frames(self, frames: list) -> None:
        pass

    def send_frames(self, frames: list, source: bytes | None = None, partial: bool = False) -> None:
        """Hand frames to the switch (batched; never blocks: a full queue drops, like a link).
        ``partial``: the frames are TCP/IPv4 whose checksum field holds only the pseudo-header
        sum (CHECKSUM_PARTIAL), to be completed only where a link needs it."""
        if not frames:
            return
        head = [source or self.port, PARTIAL] if partial else [source or self.port]
        try:
            for i in range(0, len(frames), MAX_BATCH):
                self.push.send_multipart([*head, *frames[i : i + MAX_BATCH]], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.drops.drop("bus_full")

    def publish_event(self, type_: str, **fields) -> None:
        """An event for other services (republished by the switch on topic ev:<type>)."""
        try:
            self.push.send_multipart([endpoints.EVENT_PREFIX + type_.encode(), envelope.pack(type_, **fields)], zmq.NOBLOCK)
        except zmq.Again:
            self.drops.drop("bus_full")

    # -- control -------------------------------------------------------------------------
    def _on_ctl(self) -> None:
        while True:
            try:
                raw = self.ctl.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = envelope.unpack(raw)
                handler = getattr(self, "handle_" + msg["type"].replace("-", "_"), None)
                if handler is None:
                    raise ValueError(f"unknown request {msg['type']!r}")
                reply = handler(msg) or {}
                out = envelope.pack("reply", **reply)
            except Exception as e:  # a bad request must never kill the service
                self.log.warning("control_error", error=str(e))
                out = envelope.pack("error", error=str(e))
            self.ctl.send(out)

    def handle_ping(self, msg) -> dict:
        return {"service": self.name, "pid": os.getpid()}

    def handle_stats(self, msg) -> dict:
        return {"service": self.name, "counters": dict(self.counters)}

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    # -- running -------------------------------------------------------------------------
    def start(self) -> None:
        """Hook: open sockets, load state. Called before the loop runs."""

    def stop(self) -> None:
        """Hook: flush state. Called after the loop ends."""

    def run(self) -> None:
        # a signal must wake the poll: route it through a pipe the loop watches
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        self.loop.add_reader(rfd, lambda: os.read(rfd, 512))
        signal.signal(signal.SIGTERM, lambda *_: self.loop.stop())
        signal.signal(signal.SIGINT, lambda *_: self.loop.stop())
        self.start()
        self.log.info("started", pid=os.getpid())
        try:
            self.loop.run()
        finally:
            self.stop()
            self.log.info("stopped")

    @classmethod
    def main(cls, argv=None) -> None:
        p = argparse.ArgumentParser(prog=f"gangway-{cls.name}")
        p.add_argument("--run-dir", required=True)
        args = p.parse_args(argv)
        try:
            svc = cls(Path(args.run_dir))
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        svc.run()
