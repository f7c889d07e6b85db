"""Where a guest flow goes: address mapping (host alias, virtual services) and allow/deny policy.

``Policy.decide(proto, dst, dport)`` answers for one new flow, with ``dst`` the 4 raw address
bytes the guest used. The answer is a :class:`Target` (connect there) or a :class:`Reject`
(what to tell the guest). Order of the rules:

1. An explicit mapping ``[flow] map`` entry for (proto, dst:port) wins, also on the gateway.
   Built-in entries (DNS over TCP on the DNS address → ``unix:dns-tcp.sock``) come first;
   a user entry with the same ``from``/``proto`` replaces one; ``to = "none"`` removes it.
2. The gateway / DNS address on any other port: ``Reject("closed")`` (RST / port unreachable).
3. Other addresses inside the guest subnet except the host alias: ``Reject("subnet")``
   (the switch delivers guest-to-guest traffic; nothing for flow there).
4. Link-local metadata 169.254.169.254 unless ``allow_metadata``: ``Reject("metadata")``.
5. ``deny`` entries, then ``allow`` (when non-empty, only those): ``Reject("denied")``.
   They match the address the guest used, so ``deny = ["192.168.65.254/32"]`` cuts the guest
   off from host loopback. ``CIDR`` matches every protocol; ``CIDR:port`` (or ``CIDR:lo-hi``)
   only TCP and UDP to those ports.
6. Addresses that are never reachable through the host (0/8, 127/8 used directly, multicast,
   class E, broadcast): ``Reject("martian")``.
7. The host alias goes to 127.0.0.1 on the same port; anything else to itself.
"""
from __future__ import annotations

import ipaddress
import os
import socket

TCP, UDP, ICMP = "tcp", "udp", "icmp"
METADATA = ipaddress.IPv4Address("169.254.169.254").packed
_MARTIANS = [ipaddress.IPv4Network(n) for n in
             ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")]


class PolicyError(ValueError):
    """A bad ``flow.map`` / ``flow.allow`` / ``flow.deny`` entry; the message names it."""


class Target:
    """Where to connect: ``family`` is AF_INET or AF_UNIX, ``addr`` a (host, port) pair or a path."""

    __slots__ = ("family", "addr")

    def __init__(self, family: int, addr):
        self.family = family
        self.addr = addr

    def __repr__(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"Target(unix:{self.addr})"
        return f"Target({self.addr[0]}:{self.addr[1]})"

    def __eq__(self, other):
        return isinstance(other, Target) and (self.family, self.addr) == (other.family, other.addr)

    def text(self) -> str:
        return f"unix:{self.addr}" if self.family == socket.AF_UNIX else f"{self.addr[0]}:{self.addr[1]}"


class Reject:
    """Refuse a flow. ``reason``: "closed" (an unmapped gateway port: RST / port unreachable),
    "denied" / "metadata" / "martian" (policy: RST / ICMP admin prohibited), "subnet"."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    @property
    def admin(self) -> bool:
        """True when ICMP should say "administratively prohibited" (type 3 code 13)."""
        return self.reason != "closed"

    def __repr__(self) -> str:
        return f"Reject({self.reason})"

    def __eq__(self, other):
        return isinstance(other, Reject) and other.reason == self.reason


class _Rule:
    __slots__ = ("net", "lo", "hi")

    def __init__(self, text: str, key: str):
        if not isinstance(text, str):
            raise PolicyError(f"{key}: expected \"CIDR\" or \"CIDR:port\", got {text!r}")
        net, sep, ports = text.partition(":")
        try:
            self.net = ipaddress.IPv4Network(net.strip(), strict=False)
        except ValueError:
            raise PolicyError(f"{key}: not an IPv4 CIDR: {text!r}") from None
        if sep:
            lo, _, hi = ports.partition("-")
            try:
                self.lo, self.hi = int(lo), int(hi or lo)
            except ValueError:
                raise PolicyError(f"{key}: bad port in {text!r}") from None
            if not 0 <= self.lo <= self.hi <= 65535:
                raise PolicyError(f"{key}: bad port range in {text!r}")
        else:
            self.lo = self.hi = None

    def matches(self, proto: str, addr: ipaddress.IPv4Address, port: int | None) -> bool:
        if addr not in self.net:
            return False
        if self.lo is None:
            return True
        return proto != ICMP and port is not None and self.lo <= port <= self.hi


def _hostport(text: str, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
        p = int(port)
        if not sep or not 0 < p < 65536:
            raise ValueError
    except ValueError:
        raise PolicyError(f"{key}: expected IPv4:port, got {text!r}") from None
    return host, p


def default_map(cfg: dict) -> list[dict]:
    """The built-in mappings: DNS over TCP on the DNS address goes to the dns service."""
    dns = cfg["network"].get("dns", cfg["network"]["gateway"])
    return [{"from": f"{dns}:53", "proto": "tcp", "to": "unix:dns-tcp.sock"}]


def parse_map(entries, run_dir: str) -> dict:
    """``[{from, proto, to}]`` → {(proto, addr bytes, port): Target | None}. Later entries
    replace earlier ones; ``to = "none"`` maps to None (removes a built-in entry)."""
    table: dict = {}
    if not isinstance(entries, list):
        raise PolicyError("flow.map must be a list of tables")
    for i, e in enumerate(entries):
        key = f"flow.map[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("from"), str) or not isinstance(e.get("to"), str):
            raise PolicyError(f"{key}: needs from = \"IP:port\" and to = \"IP:port\" or \"unix:PATH\"")
        proto = e.get("proto", TCP)
        if proto not in (TCP, UDP):
            raise PolicyError(f"{key}: proto must be \"tcp\" or \"udp\", got {proto!r}")
        host, port = _hostport(e["from"], key + ".from")
        to = e["to"]
        if to == "none":
            target = None
        elif to.startswith("unix:"):
            if proto != TCP:
                raise PolicyError(f"{key}: unix targets are for tcp only")
            path = to[5:]
            if not path:
                raise PolicyError(f"{key}: empty unix path")
            target = Target(socket.AF_UNIX, path if os.path.isabs(path) else os.path.join(run_dir, path))
        else:
            target = Target(socket.AF_INET, _hostport(to, key + ".to"))
        table[(proto, ipaddress.IPv4Address(host).packed, port)] = target
    return table


class Policy:
    def __init__(self, *, gateway: str, host_alias: str, subnet: str, dns: str | None = None,
                 allow=(), deny=(), allow_metadata: bool = False, mappings=(), run_dir: str = "."):
        self.gateway = ipaddress.IPv4Address(gateway).packed
        self.dns = ipaddress.IPv4Address(dns or gateway).packed
        self.host_alias = ipaddress.IPv4Address(host_alias).packed
        self.subnet = ipaddress.IPv4Network(subnet)
        self.allow = [_Rule(t, f"flow.allow[{i}]") for i, t in enumerate(allow)]
        self.deny = [_Rule(t, f"flow.deny[{i}]") for i, t in enumerate(deny)]
        self.allow_metadata = allow_metadata
        self.map = {k: v for k, v in parse_map(list(mappings), run_dir).items() if v is not None}
        self._cache: dict = {}

    @classmethod
    def from_config(cls, cfg: dict, run_dir: str) -> "Policy":
        net, fl = cfg["network"], cfg["flow"]
        user = fl.get("map", [])
        parse_map(user, str(run_dir))  # errors name the user's own entry index
        return cls(gateway=net["gateway"], host_alias=net["host_alias"], subnet=net["subnet"],
                   dns=net.get("dns"), allow=fl.get("allow", []), deny=fl.get("deny", []),
                   allow_metadata=fl.get("allow_metadata", False),
                   mappings=default_map(cfg) + user, run_dir=str(run_dir))

    def is_local(self, dst: bytes) -> bool:
        """The gateway's own addresses (not the host alias)."""
        return dst == self.gateway or dst == self.dns

    def decide(self, proto: str, dst: bytes, dport: int | None):
        """Target or Reject for a new flow from the guest to ``dst``:``dport`` (``dport`` is
        None for ICMP). Results are memoised per (proto, dst, dport) (bounded)."""
        k = (proto, dst, dport)
        r = self._cache.get(k)
        if r is None:
            r = self._decide(proto, dst, dport)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[k] = r
        return r

    def _decide(self, proto: str, dst: bytes, dport):
        if dport is not None:
            t = self.map.get((proto, dst, dport))
            if t is not None:
                return t
        if self.is_local(dst):
            return Reject("closed")
        addr = ipaddress.IPv4Address(dst)
        if addr in self.subnet and dst != self.host_alias:
            return Reject("subnet")
        if dst == METADATA and not self.allow_metadata:
            return Reject("metadata")
        for rule in self.deny:
            if rule.matches(proto, addr, dport):
                return Reject("denied")
        if self.allow and not any(rule.matches(proto, addr, dport) for rule in self.allow):
            return Reject("denied")
        if dst == self.host_alias:
            return Target(socket.AF_INET, ("127.0.0.1", dport or 0))
        if dst == b"\xff\xff\xff\xff" or any(addr in n for n in _MARTIANS):
            return Reject("martian")
        return Target(socket.AF_INET, (str(addr), dport or 0))


def check_config(cfg: dict, run_dir: str = ".") -> None:
    """Raise PolicyError naming the first bad ``flow.map``/``flow.allow``/``flow.deny`` entry
    (for config validation at ``gangway up``, before the flow service would fail to start)."""
    for key in ("allow", "deny"):
        if not isinstance(cfg["flow"].get(key, []), list):
            raise PolicyError(f"flow.{key} must be a list of \"CIDR\" or \"CIDR:port\" strings")
    Policy.from_config(cfg, run_dir)
