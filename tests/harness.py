"""Test harness: a whole gangway stack in a temp run dir, and namespace guests behind TAPs.

Everything a test creates is removed afterwards: the stack (supervisord by PID), the
namespaces, and any process started in them (by PID).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


from bus.client import ControlError, request
from gangway import config as configmod
from gangway import runner

ROOT = configmod.ROOT
UDHCPC_SCRIPT = ROOT / "tests" / "udhcpc.script"


def have_root_net() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip") is not None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


class Stack:
    """A gangway stack started with `gangway up -d` in its own run dir."""

    def __init__(self, overrides: dict | None = None, run_dir: Path | None = None):
        self.own_dir = run_dir is None  # a temp dir of ours: removed by cleanup()
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="gangway-run-"))
        self.cfg = configmod.validate(_deep_merge(configmod.load(), overrides or {}))
        self.started = False

    def gangway(self, *args: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "gangway.cli", "--run-dir", str(self.run_dir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, cwd=ROOT, **kw)

    def up(self, netns: list[str] = (), timeout: float = 30) -> "Stack":
        cfg = json.loads(json.dumps(self.cfg))
        cfg["bridge"]["taps"] = list(cfg["bridge"]["taps"]) + list(netns)
        self.started = True  # even a failed start may leave supervisord running: down() stops it
        runner.start(self.run_dir, cfg, timeout=timeout)
        return self

    def down(self) -> None:
        if self.started:
            runner.stop(self.run_dir)
            self.started = False

    def cleanup(self) -> None:
        """Stop the stack and remove the temp run dir (state and logs included)."""
        self.down()
        if self.own_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def request(self, service: str, type_: str, timeout: float = 3.0, **fields) -> dict:
        return request(self.run_dir, service, type_, timeout=timeout, **fields)

    def pid(self, service: str) -> int:
        return self.request(service, "ping")["pid"]

    def kill9(self, service: str) -> int:
        pid = self.pid(service)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, service: str, old_pid: int, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = self.pid(service)
                if pid != old_pid:
                    return pid
            except ControlError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{service} was not restarted within {timeout} s")

    def log(self, service: str) -> list[dict]:
        out = []
        path = self.run_dir / "logs" / f"{service}.log"
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"event": "raw", "text": line})
        return out

    def stats(self, service: str) -> dict:
        return self.request(service, "stats")["counters"]


class Guest:
    """A network namespace whose eth0 is a gangway TAP (attached by the bridge)."""

    def __init__(self, prefix: str = "gwt"):
        self.name = f"{prefix}{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        etc = Path("/etc/netns") / self.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # never the host's resolver
        self.run("ip", "link", "set", "lo", "up")
        self.procs: list[subprocess.Popen] = []
        self.ip: str | None = None

    def run(self, *cmd: str, timeout: float = 60, check: bool = False, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self.procs.append(p)
        return p

    def dhcp(self, timeout: float = 30) -> str:
        """Run busybox udhcpc once; apply the lease with our script; return the address."""
        r = self.run("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "1",
                     "-s", str(UDHCPC_SCRIPT), timeout=timeout)
        assert r.returncode == 0, f"udhcpc failed: {r.stdout}\n{r.stderr}"
        self.ip = self.addr()
        return self.ip

    def addr(self) -> str | None:
        r = self.run("ip", "-4", "-o", "addr", "show", "dev", "eth0")
        for tok in r.stdout.split():
            if "/" in tok and tok[0].isdigit():
                return tok.split("/")[0]
        return None

    def wait_link(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("ip", "link", "show", "eth0").returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("eth0 did not appear in the guest")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)
