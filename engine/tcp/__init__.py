"""Sans-I/O user-space TCP (RFC 9293) for terminating guest connections.

- :mod:`.conn`: :class:`TcpConnection`, the per-connection state machine.
- :mod:`.events`: what a connection reports (Connected, DataReadable, EndOfStream, SendSpace,
  Reset, Closed).
- :mod:`.seq`: modulo-2**32 arithmetic; :mod:`.rto`: RFC 6298; :mod:`.congestion`: NewReno;
  :mod:`.sack`: range sets and SACK blocks; :mod:`.reassembly`: out-of-order queue;
  :mod:`.isn`: RFC 6528 initial sequence numbers.
"""
from .conn import State, TcpConfig, TcpConnection, TcpStateError, TcpStats
from .events import Closed, Connected, DataReadable, EndOfStream, Reset, SendSpace
from .isn import IsnGenerator

__all__ = [
    "TcpConnection", "TcpConfig", "TcpStats", "TcpStateError", "State", "IsnGenerator",
    "Connected", "DataReadable", "EndOfStream", "SendSpace", "Reset", "Closed",
]
