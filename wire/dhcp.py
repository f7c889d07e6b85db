"""DHCPv4 / BOOTP messages (RFC 2131, 2132): bounded parsing and building, option codecs
(RFC 3396 long options, RFC 3397 domain search, RFC 3442 classless static routes, RFC 4702 FQDN).

```
 0                   1                   2                   3
 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
+---------------+---------------+---------------+---------------+
|     op (1)    |   htype (1)   |   hlen (1)    |   hops (1)    |
+---------------+---------------+---------------+---------------+
|                            xid (4)                            |
+-------------------------------+-------------------------------+
|           secs (2)            |  flags (2) (bit 15: broadcast)|
+-------------------------------+-------------------------------+
|  ciaddr (4)  |  yiaddr (4)  |  siaddr (4)  |  giaddr (4)      |
+---------------------------------------------------------------+
|  chaddr (16)  |  sname (64)  |  file (128)                    |
+---------------------------------------------------------------+
|  magic cookie 99.130.83.99 (4)  |  options (variable, END 255) |
+---------------------------------------------------------------+
```

Parsing: ``parse(buf)`` checks every length against the end of the buffer and raises
``DhcpError`` (a ValueError) saying what was wrong. Repeated instances of an option are
concatenated (RFC 3396), in the order options field, ``file``, ``sname`` when option 52
(overload) says those fields carry options.

Building: ``DhcpMessage.encode(min_size, max_size)`` writes options in insertion order (message
type and server id first), splits values over 255 bytes into several instances, and when the
message would exceed ``max_size`` spills options into ``file`` and ``sname`` with option 52.
"""
from __future__ import annotations

import ipaddress
import struct

BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
BOOTP_LEN = BOOTP.size  # 236
MAGIC = b"\x63\x82\x53\x63"
OPTIONS_OFFSET = BOOTP_LEN + 4  # 240
SNAME_OFFSET, FILE_OFFSET = 44, 108
SNAME_LEN, FILE_LEN = 64, 128
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000
ZERO_IP = b"\0\0\0\0"
# A client must accept a 576-byte IP datagram (RFC 2131 section 2): 548 bytes of DHCP message.
MIN_MAX_MESSAGE = 576
IP_UDP_OVERHEAD = 28

# message types (option 53)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
TYPE_NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}

# options
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN = 1, 3, 6, 12, 15
OPT_MTU, OPT_BROADCAST, OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_OVERLOAD = 26, 28, 50, 51, 52
OPT_MSG_TYPE, OPT_SERVER_ID, OPT_PARAM_LIST, OPT_MESSAGE, OPT_MAX_SIZE = 53, 54, 55, 56, 57
OPT_T1, OPT_T2, OPT_CLIENT_ID, OPT_FQDN, OPT_SEARCH, OPT_CLASSLESS = 58, 59, 61, 81, 119, 121

# Options whose receivers concatenate split instances even when each is short (RFC 3396 aware).
SPLITTABLE = frozenset({OPT_SEARCH, OPT_CLASSLESS})


class DhcpError(ValueError):
    """A DHCP message (or option) that cannot be parsed; the message says what is wrong."""


class DhcpMessage:
    """One BOOTP/DHCP message. Addresses are 4-byte ``bytes``; ``options`` maps code -> value
    (the concatenation of all instances) and keeps insertion order for encoding."""

    __slots__ = ("op", "htype", "hlen", "hops", "xid", "secs", "flags", "ciaddr", "yiaddr", "siaddr",
                 "giaddr", "chaddr", "sname", "file", "options")

    def __init__(self, op=BOOTREPLY, htype=1, hlen=6, hops=0, xid=0, secs=0, flags=0, ciaddr=ZERO_IP,
                 yiaddr=ZERO_IP, siaddr=ZERO_IP, giaddr=ZERO_IP, chaddr=b"\0" * 6, sname=b"", file=b"",
                 options=None):
        self.op, self.htype, self.hlen, self.hops, self.xid = op, htype, hlen, hops, xid
        self.secs, self.flags = secs, flags
        self.ciaddr, self.yiaddr, self.siaddr, self.giaddr = ciaddr, yiaddr, siaddr, giaddr
        self.chaddr, self.sname, self.file = chaddr, sname, file
        self.options: dict[int, bytes] = options if options is not None else {}

    def __repr__(self) -> str:
        t = TYPE_NAMES.get(self.msg_type, self.msg_type)
        return f"<DhcpMessage {t} xid={self.xid:#x} chaddr={self.mac.hex(':')} options={sorted(self.options)}>"

    @property
    def msg_type(self) -> int | None:
        v = self.options.get(OPT_MSG_TYPE)
        return v[0] if v and len(v) == 1 else None

    @property
    def mac(self) -> bytes:
        return self.chaddr[:6]

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    def ip_option(self, code: int) -> bytes | None:
        """A 4-byte address option (50 requested IP, 54 server id), or None when absent."""
        v = self.options.get(code)
        if v is None:
            return None
        if len(v) != 4:
            raise DhcpError(f"option {code} must be 4 bytes, got {len(v)}")
        return v

    def max_message_size(self) -> int:
        """Largest DHCP message (UDP payload) the client accepts: option 57 (which counts the IP
        and UDP headers, as dnsmasq reads it) or the 576-byte datagram every client must take."""
        v = self.options.get(OPT_MAX_SIZE)
        size = MIN_MAX_MESSAGE
        if v is not None and len(v) == 2:
            size = max(size, struct.unpack("!H", v)[0])
        return size - IP_UDP_OVERHEAD

    def encode(self, min_size: int = 300, max_size: int | None = None) -> bytes:
        """The message as bytes, padded to ``min_size`` (BOOTP's 300). When the options do not fit
        in ``max_size`` bytes they spill into ``file`` and ``sname`` (option 52); if even that is
        not enough, everything goes in the options field and the message is larger."""
        chaddr = self.chaddr.ljust(16, b"\0")[:16]
        items = sorted(self.options.items(), key=lambda kv: (kv[0] != OPT_MSG_TYPE, kv[0] != OPT_SERVER_ID))
        items = [kv for kv in items if kv[0] not in (OPT_PAD, OPT_END, OPT_OVERLOAD)]
        body = b"".join(encode_option(c, v) for c, v in items)
        sname, file = self.sname.ljust(SNAME_LEN, b"\0")[:SNAME_LEN], self.file.ljust(FILE_LEN, b"\0")[:FILE_LEN]
        if max_size is not None and OPTIONS_OFFSET + len(body) + 1 > max_size:
            laid = _layout(items, max_size - OPTIONS_OFFSET)
            if laid is not None:
                body, file_opts, sname_opts, overload = laid
                cut = 3 if body[:2] == b"\x35\x01" else 0  # option 52 right after the message type
                body = body[:cut] + encode_option(OPT_OVERLOAD, bytes((overload,))) + body[cut:]
                if overload & 1:
                    file = (file_opts + b"\xff").ljust(FILE_LEN, b"\0")
                if overload & 2:
                    sname = (sname_opts + b"\xff").ljust(SNAME_LEN, b"\0")
        head = BOOTP.pack(self.op, self.htype, self.hlen, self.hops, self.xid, self.secs, self.flags,
                          self.ciaddr, self.yiaddr, self.siaddr, self.giaddr, chaddr, sname, file)
        out = bytearray(head)
        out += MAGIC
        out += body
        out.append(OPT_END)
        if len(out) < min_size:
            out += bytes(min_size - len(out))
        return bytes(out)


def encode_option(code: int, value: bytes) -> bytes:
    """One option; values over 255 bytes are split into several instances (RFC 3396)."""
    if not value:
        return bytes((code, 0))
    if len(value) <= 255:
        return bytes((code, len(value))) + value
    out = bytearray()
    for i in range(0, len(value), 255):
        chunk = value[i : i + 255]
        out += bytes((code, len(chunk)))
        out += chunk
    return bytes(out)


def _layout(items, room: int):
    """Fit ``items`` into the options field (``room`` bytes before the message limit, less
    option 52 and END), then ``file`` and ``sname`` (less END). Whole options go to the first
    field with space; long or RFC 3396-aware options are split in field order. Returns
    (options, file, sname, overload) or None when they do not fit."""
    caps = [room - 3 - 1, FILE_LEN - 1, SNAME_LEN - 1]
    if caps[0] < 0:
        return None
    bufs = [bytearray(), bytearray(), bytearray()]
    for code, value in items:
        need = 2 + len(value)
        if len(value) <= 255:
            slot = next((f for f in range(3) if caps[f] - len(bufs[f]) >= need), None)
            if slot is not None:
                bufs[slot] += bytes((code, len(value))) + value
                continue
            if code not in SPLITTABLE:
                return None
        rest = value
        for f in range(3):
            while rest and caps[f] - len(bufs[f]) >= 3:
                chunk = rest[: min(255, caps[f] - len(bufs[f]) - 2)]
                bufs[f] += bytes((code, len(chunk))) + chunk
                rest = rest[len(chunk):]
        if rest:
            return None
    overload = (1 if bufs[1] else 0) | (2 if bufs[2] else 0)
    return bytes(bufs[0]), bytes(bufs[1]), bytes(bufs[2]), overload or 1


def _parse_options(buf, off: int, end: int, opts: dict, where: str) -> int | None:
    """Parse options in buf[off:end] into opts (concatenating repeats); return the overload
    value (only read in the options field). The options field must end with END; ``file`` and
    ``sname`` may simply run out."""
    overload = None
    while off < end:
        code = buf[off]
        off += 1
        if code == OPT_PAD:
            continue
        if code == OPT_END:
            return overload
        if off >= end:
            raise DhcpError(f"option {code} in {where} has no length byte")
        n = buf[off]
        off += 1
        if off + n > end:
            raise DhcpError(f"option {code} in {where} says {n} bytes but only {end - off} remain")
        value = bytes(buf[off : off + n])
        off += n
        if code == OPT_OVERLOAD and where == "options":
            if n != 1 or value[0] not in (1, 2, 3):
                raise DhcpError(f"option 52 (overload) must be one byte of 1, 2 or 3, got {value.hex()}")
            overload = value[0]
            continue
        prev = opts.get(code)
        opts[code] = value if prev is None else prev + value
    if where == "options":
        raise DhcpError("options field has no END option")
    return overload


def parse(buf) -> DhcpMessage:
    """A DhcpMessage from ``buf`` (bytes-like: a UDP payload), or DhcpError."""
    if len(buf) < OPTIONS_OFFSET:
        raise DhcpError(f"too short for a DHCP message ({len(buf)} bytes, need {OPTIONS_OFFSET})")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = BOOTP.unpack_from(buf, 0)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpError(f"bad op {op}")
    if htype != 1 or hlen != 6:
        raise DhcpError(f"hardware type {htype}/length {hlen} is not ethernet")
    if bytes(buf[BOOTP_LEN:OPTIONS_OFFSET]) != MAGIC:
        raise DhcpError("missing DHCP magic cookie (plain BOOTP is not served)")
    opts: dict[int, bytes] = {}
    overload = _parse_options(buf, OPTIONS_OFFSET, len(buf), opts, "options")
    if overload in (1, 3):
        _parse_options(file, 0, FILE_LEN, opts, "file")
        file = b""
    if overload in (2, 3):
        _parse_options(sname, 0, SNAME_LEN, opts, "sname")
        sname = b""
    return DhcpMessage(op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
                       sname.rstrip(b"\0"), file.rstrip(b"\0"), opts)


# -- option value encoders --------------------------------------------------------------------
def encode_ip(addr) -> bytes:
    """Options 1 (mask), 28 (broadcast), 50, 54 (server id): one address."""
    return ipaddress.IPv4Address(addr).packed


def encode_ips(addrs) -> bytes:
    """Options 3 (routers), 6 (DNS servers): a list of addresses."""
    return b"".join(ipaddress.IPv4Address(a).packed for a in addrs)


def encode_u8(v: int) -> bytes:
    """Option 53 (message type)."""
    return struct.pack("!B", v)


def encode_u16(v: int) -> bytes:
    """Options 26 (MTU, at least 68), 57 (max message size)."""
    return struct.pack("!H", v)


def encode_u32(v: int) -> bytes:
    """Options 51 (lease time), 58 (T1), 59 (T2): seconds."""
    return struct.pack("!I", v)


def encode_text(s: str) -> bytes:
    """Options 12 (hostname), 15 (domain name), 56 (message): NVT ASCII, no NUL (RFC 2132)."""
    b = s.encode("ascii")
    if not b or b"\0" in b:
        raise ValueError(f"text option must be non-empty ASCII without NUL: {s!r}")
    return b


# short names used by older callers
ip_list, u16, u32 = encode_ips, encode_u16, encode_u32


def _labels(name: str) -> list[bytes]:
    labels = [lab for lab in name.strip().strip(".").split(".")]
    if labels == [""]:
        return []
    out = []
    for lab in labels:
        if not lab:
            raise ValueError(f"empty label in {name!r}")
        raw = lab.encode("ascii") if lab.isascii() else lab.encode("idna")
        if len(raw) > 63:
            raise ValueError(f"label longer than 63 bytes in {name!r}")
        out.append(raw)
    if sum(len(x) + 1 for x in out) + 1 > 255:
        raise ValueError(f"name longer than 255 bytes: {name!r}")
    return out


def encode_search(domains) -> bytes:
    """Option 119 (RFC 3397): DNS names in wire format, suffixes compressed (RFC 1035 4.1.4).
    Empty names are skipped."""
    out = bytearray()
    offsets: dict[tuple, int] = {}
    for d in domains:
        labels = _labels(d)
        if not labels:
            continue
        for i in range(len(labels)):
            suffix = tuple(lab.lower() for lab in labels[i:])
            ptr = offsets.get(suffix)
            if ptr is not None:
                out += struct.pack("!H", 0xC000 | ptr)
                break
            if len(out) < 0x3FFF:
                offsets[suffix] = len(out)
            out.append(len(labels[i]))
            out += labels[i]
        else:
            out.append(0)
    return bytes(out)


def _read_name(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """A possibly compressed DNS name at data[pos:]: (labels, offset after it). Pointers must
    point strictly backwards, so decoding always ends."""
    labels: list[bytes] = []
    end = None
    total = 1
    while True:
        if pos >= len(data):
            raise DhcpError("domain name runs past the end of the option")
        n = data[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise DhcpError("truncated compression pointer in domain name")
            ptr = ((n & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            if ptr >= pos:
                raise DhcpError("compression pointer must point backwards")
            pos = ptr
            continue
        if n & 0xC0:
            raise DhcpError(f"bad label type {n >> 6:#x} in domain name")
        if n == 0:
            return labels, (pos + 1 if end is None else end)
        if pos + 1 + n > len(data):
            raise DhcpError("label runs past the end of the option")
        total += n + 1
        if total > 255:
            raise DhcpError("domain name longer than 255 bytes")
        labels.append(bytes(data[pos + 1 : pos + 1 + n]))
        pos += 1 + n


def decode_search(data: bytes) -> list[str]:
    """Option 119 back to names (pointers are resolved within the option data)."""
    names, off = [], 0
    while off < len(data):
        labels, off = _read_name(data, off)
        names.append(".".join(lab.decode("ascii", "replace") for lab in labels))
    return names


def encode_classless(routes) -> bytes:
    """Option 121 (RFC 3442): (network, router) pairs; each destination is sent as its prefix
    length and only the significant octets of the network address."""
    out = bytearray()
    for net, gw in routes:
        net = ipaddress.IPv4Network(net)
        width = (net.prefixlen + 7) // 8
        out.append(net.prefixlen)
        out += net.network_address.packed[:width]
        out += ipaddress.IPv4Address(gw).packed
    return bytes(out)


def decode_classless(data: bytes) -> list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]]:
    out, off = [], 0
    while off < len(data):
        plen = data[off]
        if plen > 32:
            raise DhcpError(f"classless route prefix /{plen}")
        width = (plen + 7) // 8
        if off + 1 + width + 4 > len(data):
            raise DhcpError("truncated classless route")
        dest = bytes(data[off + 1 : off + 1 + width]).ljust(4, b"\0")
        gw = bytes(data[off + 1 + width : off + 5 + width])
        out.append((ipaddress.IPv4Network((dest, plen), strict=False), ipaddress.IPv4Address(gw)))
        off += 5 + width
    return out


# -- decoders for what the server reads -------------------------------------------------------
def decode_param_list(value: bytes | None) -> list[int]:
    """Option 55: the option codes the client asks for, in its order, without repeats."""
    seen: dict[int, None] = {}
    for c in value or b"":
        if c not in (OPT_PAD, OPT_END):
            seen.setdefault(c, None)
    return list(seen)


def decode_client_id(value: bytes | None) -> str:
    """Option 61 as lowercase hex ("" when absent); at least 2 bytes (type + id) per RFC 2132."""
    if value is None:
        return ""
    if len(value) < 2:
        raise DhcpError(f"client identifier must be at least 2 bytes, got {len(value)}")
    return value.hex()


def decode_hostname(value: bytes) -> str:
    """Option 12 as text (NVT ASCII; a trailing NUL, which some clients send, is dropped)."""
    return value.split(b"\0", 1)[0].decode("ascii", "replace")


FQDN_S, FQDN_O, FQDN_E, FQDN_N = 0x01, 0x02, 0x04, 0x08


def decode_fqdn(value: bytes) -> tuple[int, str]:
    """Option 81 (RFC 4702): (flags, name). With the E flag the name is in DNS wire format
    (uncompressed, possibly partial, i.e. without the final root label); otherwise ASCII."""
    if len(value) < 3:
        raise DhcpError(f"FQDN option must be at least 3 bytes, got {len(value)}")
    flags, name = value[0], value[3:]
    if not flags & FQDN_E:
        return flags, decode_hostname(name)
    labels, pos = [], 0
    while pos < len(name):
        n = name[pos]
        if n == 0:
            break
        if n & 0xC0:
            raise DhcpError("FQDN option must not use compression")
        if pos + 1 + n > len(name):
            raise DhcpError("FQDN label runs past the end of the option")
        labels.append(bytes(name[pos + 1 : pos + 1 + n]).decode("ascii", "replace"))
        pos += 1 + n
    return flags, ".".join(labels)
