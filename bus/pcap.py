"""Classic libpcap files (LINKTYPE_ETHERNET), as tshark reads them: a writer and a reader."""
from __future__ import annotations

import struct

MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapError(ValueError):
    pass


class PcapWriter:
    def __init__(self, f):
        self.f = f
        f.write(_GLOBAL.pack(MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))

    def write(self, frame, ts: float) -> None:
        sec = int(ts)
        usec = int((ts - sec) * 1_000_000)
        n = len(frame)
        cap = min(n, SNAPLEN)
        self.f.write(_RECORD.pack(sec, usec, cap, n))
        self.f.write(bytes(frame[:cap]))


def read_pcap(f):
    """Yield (ts, frame) from a classic pcap of ethernet frames (either byte order)."""
    head = f.read(_GLOBAL.size)
    if len(head) < _GLOBAL.size:
        raise PcapError("not a pcap file: too short")
    (magic,) = struct.unpack("<I", head[:4])
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        endian = ">"
    else:
        raise PcapError("not a classic pcap file (pcapng is not supported; convert with editcap -F pcap)")
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    _, _, _, _, _, _, linktype = struct.unpack(endian + "IHHiIII", head)
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"link type {linktype} is not ethernet")
    rec = struct.Struct(endian + "IIII")
    while True:
        h = f.read(rec.size)
        if not h:
            return
        if len(h) < rec.size:
            raise PcapError("truncated record header")
        sec, frac, cap, _orig = rec.unpack(h)
        data = f.read(cap)
        if len(data) < cap:
            raise PcapError("truncated record")
        yield sec + frac / (1e9 if nano else 1e6), data
