"""Starting and stopping the stack under supervisord, for a given run dir."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bus import endpoints
from bus.client import ControlError, request
from gangway import config as configmod
from gangway import netns

ROOT = configmod.ROOT
SUPERVISORD_CONF = ROOT / "supervisord.conf"


def services_in_conf() -> list[str]:
    return [line.strip()[len("[program:"):-1] for line in SUPERVISORD_CONF.read_text().splitlines()
            if line.strip().startswith("[program:")]


def env_for(run_dir: Path) -> dict:
    env = dict(os.environ)
    env["GANGWAY_RUN"] = str(Path(run_dir).resolve())
    env["GANGWAY_PYTHON"] = sys.executable
    env["GANGWAY_ROOT"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def supervisorctl(run_dir: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(SUPERVISORD_CONF), *args]
    return subprocess.run(cmd, env=env_for(run_dir), capture_output=capture, text=True)


def supervisord_pid(run_dir: Path) -> int | None:
    try:
        pid = int((Path(run_dir) / "supervisord.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def prepare(run_dir: Path, cfg: dict) -> None:
    endpoints.prepare(run_dir)
    for ns in cfg["bridge"]["taps"]:
        if not Path(f"/run/netns/{ns}").exists():
            raise configmod.ConfigError(f"bridge.taps: network namespace {ns!r} does not exist")
    tmp = configmod.effective_path(run_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, configmod.effective_path(run_dir))


def start(run_dir: Path, cfg: dict, foreground: bool = False, timeout: float = 30.0) -> int:
    """Start supervisord. In the background, return once every service answers a ping."""
    run_dir = Path(run_dir)
    if supervisord_pid(run_dir):
        raise RuntimeError(f"gangway is already running in {run_dir} (gangway down first)")
    prepare(run_dir, cfg)
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(SUPERVISORD_CONF)]
    if foreground:
        cmd.append("-n")
        proc = subprocess.Popen(cmd, env=env_for(run_dir))
        return proc.wait()
    subprocess.run(cmd, env=env_for(run_dir), check=True)
    wait_ready(run_dir, timeout)
    return 0


def wait_ready(run_dir: Path, timeout: float = 30.0, services=None) -> None:
    deadline = time.monotonic() + timeout
    pending = list(services or services_in_conf())
    while pending:
        name = pending[0]
        try:
            request(run_dir, name, "ping", timeout=0.5)
            pending.pop(0)
        except ControlError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"service {name} did not come up within {timeout:g} s "
                                   f"(see {run_dir}/logs/{name}.log)") from None
            time.sleep(0.1)
    # and supervisord agrees (a program is RUNNING once it has lived `startsecs`)
    while True:
        out = supervisorctl(run_dir, "status", capture=True).stdout
        states = [line.split()[1] for line in out.splitlines() if len(line.split()) > 1]
        if states and all(st == "RUNNING" for st in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"services not RUNNING within {timeout:g} s:\n{out}")
        time.sleep(0.2)


def rpc(run_dir: Path):
    """supervisord's XML-RPC interface over this run's unix socket."""
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{Path(run_dir).resolve()}/supervisor.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _stop_services(run_dir: Path, timeout: float) -> None:
    """Signal every service at once (supervisord alone stops them one per second)."""
    try:
        proxy = rpc(run_dir)
        proxy.supervisor.stopAllProcesses(False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p["statename"] not in ("RUNNING", "STARTING", "STOPPING", "BACKOFF")
                   for p in proxy.supervisor.getAllProcessInfo()):
                return
            time.sleep(0.05)
    except Exception:  # supervisord is gone or half up: the SIGTERM below still ends it
        pass


def stop(run_dir: Path, timeout: float = 20.0) -> None:
    run_dir = Path(run_dir)
    pid = supervisord_pid(run_dir)
    if pid:
        _stop_services(run_dir, timeout / 2)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    try:
        cfg = configmod.load_effective(run_dir)
    except FileNotFoundError:
        cfg = None
    if cfg:
        for ns in cfg["bridge"]["taps"]:
            netns.remove_tap(ns)
        qsock = run_dir / cfg["bridge"]["qemu_socket"]
        qsock.unlink(missing_ok=True)
    for sub in ("bus", "ctl"):
        d = run_dir / sub
        if d.is_dir():
            for p in d.iterdir():
                p.unlink(missing_ok=True)
    for sock in ("supervisor.sock", "dns-tcp.sock"):
        (run_dir / sock).unlink(missing_ok=True)
