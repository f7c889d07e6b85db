"""Events a :class:`~engine.tcp.conn.TcpConnection` reports through ``events()``.

- ``Connected``: the handshake completed (ESTABLISHED).
- ``DataReadable``: in-order data is waiting; call ``recv()`` (coalesced: once per drain).
- ``EndOfStream``: the peer sent FIN; after the data already readable there is no more.
- ``SendSpace``: send-buffer space was freed after a ``send()`` could not take everything.
- ``Reset(reason)``: the connection was aborted: ``"reset"`` (peer RST), ``"refused"`` (RST
  answering our SYN) or ``"timeout"`` (retransmissions exhausted; we sent an RST).
- ``Closed``: the connection reached CLOSED; drop it. Always the last event.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class DataReadable:
    pass


@dataclass(frozen=True, slots=True)
class EndOfStream:
    pass


@dataclass(frozen=True, slots=True)
class SendSpace:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    reason: str = "reset"


@dataclass(frozen=True, slots=True)
class Closed:
    pass
