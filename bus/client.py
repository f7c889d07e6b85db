"""Control-socket client used by the CLI and tests: one request, one reply, with a timeout."""
from __future__ import annotations

import zmq

from . import endpoints, envelope


class ControlError(RuntimeError):
    pass


def request(run_dir, service: str, type_: str, timeout: float = 3.0, **fields) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoints.ctl(run_dir, service))
        sock.send(envelope.pack(type_, **fields))
        if not sock.poll(int(timeout * 1000)):
            raise ControlError(f"{service} did not answer within {timeout:g} s")
        reply = envelope.unpack(sock.recv())
    finally:
        sock.close()
    if reply.get("type") == "error":
        raise ControlError(f"{service}: {reply.get('error')}")
    return reply
