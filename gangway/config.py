"""Configuration: TOML files merged over configs/default.toml, checked, with errors naming the key."""
from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "default.toml"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


def _merge(base: dict, over: dict, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in over.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{name}'")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{name}' must be a table")
            out[key] = _merge(base[key], value, name + ".")
        else:
            out[key] = value
    return out


def _expect(cfg: dict, key: str, kind, what: str):
    section, _, name = key.partition(".")
    value = cfg[section][name]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")
    return value


def _ip(cfg: dict, key: str, net=None) -> ipaddress.IPv4Address:
    raw = _expect(cfg, key, str, "an IPv4 address")
    try:
        ip = ipaddress.IPv4Address(raw)
    except ValueError:
        raise ConfigError(f"config key '{key}' is not an IPv4 address: {raw!r}") from None
    if net is not None and ip not in net:
        raise ConfigError(f"config key '{key}' ({ip}) is outside network.subnet {net}")
    return ip


def validate(cfg: dict) -> dict:
    """Check types and relations; raise ConfigError naming the first bad key."""
    raw = _expect(cfg, "network.subnet", str, "a CIDR like 192.168.65.0/24")
    try:
        net = ipaddress.IPv4Network(raw)
    except ValueError:
        raise ConfigError(f"config key 'network.subnet' is not an IPv4 network: {raw!r}") from None
    for key in ("network.gateway", "network.host_alias", "network.dns", "dhcp.pool_start", "dhcp.pool_end"):
        _ip(cfg, key, net)
    if _ip(cfg, "dhcp.pool_start") > _ip(cfg, "dhcp.pool_end"):
        raise ConfigError("config key 'dhcp.pool_start' is after 'dhcp.pool_end'")
    mac = _expect(cfg, "network.gateway_mac", str, "a MAC address")
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ConfigError(f"config key 'network.gateway_mac' is not a MAC address: {mac!r}")
    mtu = _expect(cfg, "network.mtu", int, "an integer")
    if not 576 <= mtu <= 65520:
        raise ConfigError(f"config key 'network.mtu' must be 576..65520, got {mtu}")
    _expect(cfg, "bridge.taps", list, "a list of namespace names")
    _expect(cfg, "bridge.qemu_socket", str, "a path")
    _expect(cfg, "bridge.qemu_tcp", str, "HOST:PORT or empty")
    _expect(cfg, "bridge.tap_offload", bool, "true or false")
    lease = _expect(cfg, "dhcp.lease_time", int, "seconds (an integer)")
    if lease < 60:
        raise ConfigError(f"config key 'dhcp.lease_time' must be at least 60, got {lease}")
    for i, entry in enumerate(_expect(cfg, "dhcp.static", list, "a list of tables")):
        if not isinstance(entry, dict) or "mac" not in entry or "ip" not in entry:
            raise ConfigError(f"config key 'dhcp.static[{i}]' needs mac and ip")
    mode = _expect(cfg, "dns.mode", str, '"host" or "upstream"')
    if mode not in ("host", "upstream"):
        raise ConfigError(f"config key 'dns.mode' must be \"host\" or \"upstream\", got {mode!r}")
    for i, up in enumerate(_expect(cfg, "dns.upstreams", list, "a list of IP:port strings")):
        _check_hostport(up, f"dns.upstreams[{i}]")
    for i, rule in enumerate(_expect(cfg, "dns.rule", list, "a list of tables")):
        if not isinstance(rule, dict) or not isinstance(rule.get("domain"), str) or not isinstance(rule.get("upstreams"), list):
            raise ConfigError(f"config key 'dns.rule[{i}]' needs domain and upstreams")
        for j, up in enumerate(rule["upstreams"]):
            _check_hostport(up, f"dns.rule[{i}].upstreams[{j}]")
    for key in ("flow.udp_idle_timeout", "flow.connect_timeout"):
        v = _expect(cfg, key, (int, float), "a number of seconds")
        if v <= 0:
            raise ConfigError(f"config key '{key}' must be positive")
    _expect(cfg, "flow.map", list, "a list of tables")
    backlog = _expect(cfg, "flow.syn_backlog", int, "an integer")
    if backlog < 1:
        raise ConfigError("config key 'flow.syn_backlog' must be at least 1")
    from engine.flow.policy import PolicyError, check_config
    try:
        check_config(cfg)
    except PolicyError as e:
        raise ConfigError(f"config key {e}") from None
    level = _expect(cfg, "log.level", str, "a log level")
    if level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"config key 'log.level' must be debug/info/warning/error, got {level!r}")
    return cfg


def _check_hostport(value, key: str) -> None:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"config key '{key}' must be IP:port, got {value!r}")
    host, _, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        if not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"config key '{key}' must be IP:port, got {value!r}") from None


def load(path: str | Path | None = None) -> dict:
    """The default config with ``path`` merged over it, validated."""
    with open(DEFAULT_CONFIG, "rb") as f:
        cfg = tomllib.load(f)
    if path is not None:
        try:
            with open(path, "rb") as f:
                user = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        cfg = _merge(cfg, user)
    return validate(cfg)


def effective_path(run_dir: Path) -> Path:
    return Path(run_dir) / "config.json"


def load_effective(run_dir: Path) -> dict:
    """The config `gangway up` wrote into the run dir (what every service reads)."""
    with open(effective_path(run_dir)) as f:
        return json.load(f)
