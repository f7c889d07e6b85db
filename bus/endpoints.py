"""Where the bus lives: every ZeroMQ endpoint is an ipc:// path under RUN/ (mode 0700).

Topology:
- ``switch-in``  PULL bound by the switch. Message = [source, frame, frame, ...]; ``source`` is
  the sender's port name (b"g:..." for guest links, b"s:<service>" for services). A message
  whose source starts with b"ev:" is an event and is republished unchanged on ``switch-out``.
- ``switch-out`` XPUB bound by the switch. Message = [topic, frame, frame, ...]; topic is a
  port name followed by NUL (so b"g:q1\\0" never matches b"g:q10\\0"). The XPUB tells the switch
  which ports and services are attached, and whether a capture (topic b"cap\\0") is listening.
- Either message may carry a zero-length part right after its first part: the frames after
  it are TCP over IPv4 with CHECKSUM_PARTIAL semantics (the TCP checksum field holds the folded
  pseudo-header sum; the data is trusted). Only links that need a real checksum (QEMU stream
  sockets, captures) compute it; a TAP gets it as a virtio NEEDS_CSUM header.
- ``ctl/<service>`` REP bound by each service: msgpack requests {"v": 1, "type": ...}.
"""
from __future__ import annotations

import os
from pathlib import Path

SWITCH_IN = "bus/switch-in"
SWITCH_OUT = "bus/switch-out"
CAPTURE_TOPIC = b"cap\0"
EVENT_PREFIX = b"ev:"


def run_path(run_dir, rel: str) -> Path:
    return Path(run_dir) / rel


def ipc(run_dir, rel: str) -> str:
    return "ipc://" + str(Path(run_dir).resolve() / rel)


def ctl(run_dir, service: str) -> str:
    return ipc(run_dir, f"ctl/{service}")


def topic(port: bytes) -> bytes:
    """The XPUB topic of a port or service name."""
    return port + b"\0"


def prepare(run_dir) -> Path:
    """Create RUN and its sub-folders with private permissions."""
    run = Path(run_dir)
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    for sub in ("bus", "ctl", "logs", "state"):
        (run / sub).mkdir(mode=0o700, exist_ok=True)
    return run
