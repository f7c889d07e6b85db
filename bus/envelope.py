"""msgpack control envelopes: requests, replies and events are maps with a ``type`` and ``v``."""
from __future__ import annotations

import msgpack

VERSION = 1


class EnvelopeError(ValueError):
    """A control message that is not a versioned msgpack map."""


def pack(type_: str, **fields) -> bytes:
    body = {"v": VERSION, "type": type_}
    body.update(fields)
    return msgpack.packb(body, use_bin_type=True)


def unpack(data: bytes) -> dict:
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise EnvelopeError(f"not msgpack: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise EnvelopeError("control message without a type")
    if msg.get("v") != VERSION:
        raise EnvelopeError(f"unsupported envelope version {msg.get('v')!r}")
    return msg
