"""Ethernet II frames (and 802.1Q tags skipped on parse): MAC helpers, header parse and build."""
from __future__ import annotations

import struct

ETH_HEADER = struct.Struct("!6s6sH")
ETH_LEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
BROADCAST = b"\xff" * 6
MAX_FRAME = 65535 + ETH_LEN  # super-frames from TSO links may exceed the MTU


class FrameError(ValueError):
    """A frame that cannot be parsed (the guest's fault, not ours)."""


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def is_multicast(mac: bytes) -> bool:
    return bool(mac[0] & 1)


def parse_eth(frame) -> tuple[bytes, bytes, int, int]:
    """Return (dst, src, ethertype, payload offset); raises FrameError when too short."""
    if len(frame) < ETH_LEN:
        raise FrameError("frame shorter than an ethernet header")
    dst, src, etype = ETH_HEADER.unpack_from(frame, 0)
    off = ETH_LEN
    if etype == ETHERTYPE_VLAN:
        if len(frame) < ETH_LEN + 4:
            raise FrameError("truncated 802.1Q tag")
        (etype,) = struct.unpack_from("!H", frame, 16)
        off += 4
    return dst, src, etype, off


def build_eth(dst: bytes, src: bytes, etype: int, payload) -> bytes:
    return ETH_HEADER.pack(dst, src, etype) + bytes(payload)
