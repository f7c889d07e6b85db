"""DHCPv4 / BOOTP messages (RFC 2131, 2132): bounded parsing and building, option codecs
(RFC 3396 long options, RFC 3397 domain search, RFC 3442 classless static routes)."""
from __future__ import annotations

import ipaddress
import struct

BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
BOOTP_LEN = BOOTP.size  # 236
MAGIC = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000

# message types (option 53)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
TYPE_NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}

# options
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN = 1, 3, 6, 12, 15
OPT_MTU, OPT_BROADCAST, OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_OVERLOAD = 26, 28, 50, 51, 52
OPT_MSG_TYPE, OPT_SERVER_ID, OPT_PARAM_LIST, OPT_MESSAGE, OPT_MAX_SIZE = 53, 54, 55, 56, 57
OPT_T1, OPT_T2, OPT_CLIENT_ID, OPT_FQDN, OPT_SEARCH, OPT_CLASSLESS = 58, 59, 61, 81, 119, 121


class DhcpError(ValueError):
    """A DHCP message that cannot be parsed; the message says what is wrong."""


class DhcpMessage:
    __slots__ = ("op", "htype", "hlen", "hops", "xid", "secs", "flags", "ciaddr", "yiaddr", "siaddr",
                 "giaddr", "chaddr", "sname", "file", "options")

    def __init__(self, op=BOOTREPLY, htype=1, hlen=6, hops=0, xid=0, secs=0, flags=0, ciaddr=b"\0" * 4,
                 yiaddr=b"\0" * 4, siaddr=b"\0" * 4, giaddr=b"\0" * 4, chaddr=b"\0" * 6, sname=b"", file=b"",
                 options=None):
        self.op, self.htype, self.hlen, self.hops, self.xid = op, htype, hlen, hops, xid
        self.secs, self.flags = secs, flags
        self.ciaddr, self.yiaddr, self.siaddr, self.giaddr = ciaddr, yiaddr, siaddr, giaddr
        self.chaddr, self.sname, self.file = chaddr, sname, file
        self.options: dict[int, bytes] = options if options is not None else {}

    @property
    def msg_type(self) -> int | None:
        v = self.options.get(OPT_MSG_TYPE)
        return v[0] if v and len(v) == 1 else None

    @property
    def mac(self) -> bytes:
        return self.chaddr[:6]

    def ip_option(self, code: int) -> bytes | None:
        v = self.options.get(code)
        if v is None:
            return None
        if len(v) != 4:
            raise DhcpError(f"option {code} must be 4 bytes, got {len(v)}")
        return v

    def encode(self, min_size: int = 300) -> bytes:
        chaddr = self.chaddr.ljust(16, b"\0")[:16]
        head = BOOTP.pack(self.op, self.htype, self.hlen, self.hops, self.xid, self.secs, self.flags,
                          self.ciaddr, self.yiaddr, self.siaddr, self.giaddr, chaddr,
                          self.sname.ljust(64, b"\0")[:64], self.file.ljust(128, b"\0")[:128])
        out = bytearray(head + MAGIC)
        # message type first (RFC 2131 does not require it, but clients like it early)
        order = sorted(self.options, key=lambda c: (c != OPT_MSG_TYPE, c != OPT_SERVER_ID, 0))
        for code in order:
            out += encode_option(code, self.options[code])
        out.append(OPT_END)
        if len(out) < min_size:
            out += bytes(min_size - len(out))
        return bytes(out)


def encode_option(code: int, value: bytes) -> bytes:
    """One option; values over 255 bytes are split into several instances (RFC 3396)."""
    if not value:
        return bytes((code, 0))
    out = bytearray()
    for i in range(0, len(value), 255):
        chunk = value[i : i + 255]
        out += bytes((code, len(chunk))) + chunk
    return bytes(out)


def _parse_options(buf, off: int, end: int, opts: dict, where: str) -> int | None:
    """Parse options in buf[off:end] into opts (concatenating repeats); return overload value."""
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
            raise DhcpError(f"option {code} in {where} runs past the end ({n} bytes)")
        value = bytes(buf[off : off + n])
        off += n
        if code == OPT_OVERLOAD and where == "options":
            if n != 1 or value[0] not in (1, 2, 3):
                raise DhcpError("bad option overload value")
            overload = value[0]
            continue
        opts[code] = opts.get(code, b"") + value
    if where == "options":
        raise DhcpError("options without an END option")
    return overload


def parse(buf) -> DhcpMessage:
    if len(buf) < BOOTP_LEN + 4:
        raise DhcpError(f"too short for a DHCP message ({len(buf)} bytes)")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = BOOTP.unpack_from(buf, 0)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpError(f"bad op {op}")
    if htype != 1 or hlen != 6:
        raise DhcpError(f"hardware type {htype}/length {hlen} is not ethernet")
    if bytes(buf[BOOTP_LEN : BOOTP_LEN + 4]) != MAGIC:
        raise DhcpError("missing DHCP magic cookie (plain BOOTP is not served)")
    opts: dict[int, bytes] = {}
    overload = _parse_options(buf, BOOTP_LEN + 4, len(buf), opts, "options")
    if overload in (1, 3):
        _parse_options(file, 0, len(file), opts, "file")
        file = b""
    if overload in (2, 3):
        _parse_options(sname, 0, len(sname), opts, "sname")
        sname = b""
    return DhcpMessage(op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
                       sname.rstrip(b"\0"), file.rstrip(b"\0"), opts)


# -- option value codecs ---------------------------------------------------------------------
def ip_list(addrs) -> bytes:
    return b"".join(ipaddress.IPv4Address(a).packed for a in addrs)


def u32(v: int) -> bytes:
    return struct.pack("!I", v)


def u16(v: int) -> bytes:
    return struct.pack("!H", v)


def encode_search(domains) -> bytes:
    """RFC 3397: a list of DNS names in wire format (with RFC 1035 compression of suffixes)."""
    out = bytearray()
    offsets: dict[tuple, int] = {}
    for d in domains:
        labels = [lab for lab in d.strip(".").split(".") if lab]
        for i in range(len(labels)):
            suffix = tuple(lab.lower() for lab in labels[i:])
            if suffix in offsets:
                ptr = offsets[suffix]
                out += struct.pack("!H", 0xC000 | ptr)
                break
            if len(out) < 0x3FFF:
                offsets[suffix] = len(out)
            lab = labels[i].encode("idna") if not labels[i].isascii() else labels[i].encode()
            if len(lab) > 63:
                raise ValueError(f"label too long in {d!r}")
            out += bytes((len(lab),)) + lab
        else:
            out.append(0)
    return bytes(out)


def decode_search(data: bytes) -> list[str]:
    names, off = [], 0
    while off < len(data):
        labels, pos, jumps, end = [], off, 0, None
        while True:
            if pos >= len(data):
                raise DhcpError("truncated search list")
            n = data[pos]
            if n & 0xC0 == 0xC0:
                if pos + 1 >= len(data):
                    raise DhcpError("truncated pointer in search list")
                ptr = ((n & 0x3F) << 8) | data[pos + 1]
                if end is None:
                    end = pos + 2
                if ptr >= pos or jumps > 64:
                    raise DhcpError("search list pointer must point backwards")
                jumps += 1
                pos = ptr
                continue
            if n == 0:
                if end is None:
                    end = pos + 1
                break
            labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        names.append(".".join(labels))
        off = end
    return names


def encode_classless(routes) -> bytes:
    """RFC 3442: (network, router) pairs; the destination is sent with only its significant octets."""
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
