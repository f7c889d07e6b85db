"""A tiny Linux VM for end-to-end tests: Debian cloud kernel + busybox initramfs, booted by QEMU
(TCG only) whose single NIC is a `-netdev stream` unix socket that gangway listens on.

    image = build_image()                      # cached under <repo>/build/vm
    res = boot(image, socket_path=str(sock), script="udhcpc ...; echo GANGWAY-MARK x=1")
    res.markers()["x"] == "1"

The VM never gets any other network: `-nodefaults`, one virtio-net-pci device, one stream
netdev. No KVM (it hangs on the CI machines), no `-netdev user`, no TAP.

Initramfs = several concatenated gzip'd newc cpio archives (the kernel unpacks them all in
order): the cached base (busybox, modules, /init, /etc/udhcpc.script) plus, per boot, a small
one holding `/test.sh`. `/init` runs `/test.sh`, prints `GANGWAY-MARK test_rc=N`, powers off.
"""
from __future__ import annotations

import fcntl
import gzip
import json
import lzma
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / "build" / "vm"
QEMU = "qemu-system-x86_64"
MARK = "GANGWAY-MARK"
IMAGE_FORMAT = 2  # bump when the base initramfs layout changes: forces a rebuild

# Real clients from the host's Debian packages, copied in with the shared libraries `ldd`
# names (the VM kernel runs them as is: same architecture, same glibc). Missing ones are
# left out; tests that need one check `VmImage.has(name)`.
HOST_BINARIES = {"iperf3": "/usr/bin/iperf3", "nc.openbsd": "/bin/nc.openbsd"}

# virtio-net and everything it needs; the load order is computed from the modules' own
# `depends=` modinfo (Debian's .deb ships no modules.dep: depmod runs at install time).
NET_MODULES = ["virtio_net", "virtio_pci"]

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run /etc /root
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
echo 0 > /proc/sys/kernel/printk 2>/dev/null
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "GANGWAY-MARK insmod_failed=$m"
done
ip link set lo up
: > /etc/resolv.conf
echo "GANGWAY-MARK boot=ok"
echo "GANGWAY-MARK uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -x /test.sh ]; then
  /test.sh
  echo "GANGWAY-MARK test_rc=$?"
fi
echo "GANGWAY-MARK done=1"
sync
poweroff -f
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# Applies a busybox udhcpc lease with ip(8) and writes /etc/resolv.conf.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface" 2>/dev/null
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface" 2>/dev/null
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    [ -n "$search" ] && echo "search $search" >> /etc/resolv.conf
    [ -n "$domain" ] && [ -z "$search" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    env | grep -E '^(ip|mask|router|dns|domain|search|mtu|lease|serverid)=' > /tmp/lease
    ;;
esac
exit 0
"""

# Ready-made snippet for test scripts.
DHCP_CMD = "udhcpc -i eth0 -f -q -n -t 5 -T 2 -s /etc/udhcpc.script"


# --------------------------------------------------------------------------- cpio (newc)

class Cpio:
    """Writes a newc ("070701") cpio archive in memory; no privileges needed for device nodes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ino = 1000
        self._dirs: set[str] = set()
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        name = name.lstrip("/")
        self.names.add(name)
        self._ino += 1
        nameb = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buf += hdr + nameb
        self._buf += b"\0" * (-len(self._buf) % 4)
        self._buf += data
        self._buf += b"\0" * (-len(self._buf) % 4)

    def dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if not name or name in self._dirs:
            return
        parent = os.path.dirname(name)
        if parent:
            self.dir(parent)
        self._dirs.add(name)
        self._entry(name, 0o040000 | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.dir(parent)
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.dir(parent)
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._buf += b"\0" * (-len(self._buf) % 512)
        return bytes(self._buf)

    def gz(self) -> bytes:
        return gzip.compress(self.finish(), compresslevel=6, mtime=0)


# --------------------------------------------------------------------------- image build

@dataclass
class VmImage:
    kernel: Path
    initrd: Path          # the base initramfs (gzip'd newc cpio)
    kernel_version: str   # e.g. "6.1.0-57-cloud-amd64"
    package: str          # e.g. "linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb"
    modules: list[str] = field(default_factory=list)  # load order
    binaries: list[str] = field(default_factory=list)  # HOST_BINARIES names in the image

    def has(self, name: str) -> bool:
        return name in self.binaries


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


def _kernel_candidates() -> list[str]:
    """Cloud kernel package names, best first: what the meta-package points at, then newest."""
    names: list[str] = []
    for meta in ("linux-image-cloud-amd64",):
        r = subprocess.run(["apt-cache", "depends", meta], capture_output=True, text=True)
        for m in re.finditer(r"Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", r.stdout, re.M):
            names.append(m.group(1))
    r = subprocess.run(["apt-cache", "search", "--names-only", "^linux-image-.*-cloud-amd64$"],
                       capture_output=True, text=True)
    found = sorted({line.split(" - ")[0] for line in r.stdout.splitlines()
                    if re.match(r"linux-image-\d\S*-cloud-amd64 ", line)}, reverse=True)
    return names + [n for n in found if n not in names]


def _download_kernel(work: Path) -> Path:
    env_deb = os.environ.get("GANGWAY_VM_KERNEL_DEB")
    if env_deb:
        return Path(env_deb)
    errors = []
    for name in _kernel_candidates():
        r = subprocess.run(["apt-get", "download", name], cwd=work, capture_output=True, text=True)
        debs = sorted(work.glob(f"{name}_*.deb"))
        if r.returncode == 0 and debs:
            return debs[-1]
        errors.append(f"{name}: {r.stderr.strip()[-200:]}")
    raise RuntimeError("could not download a cloud kernel package:\n" + "\n".join(errors))


def _busybox(work: Path) -> bytes:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "busybox-static"], capture_output=True, text=True)
    if "install ok installed" in r.stdout and Path("/bin/busybox").exists():
        return Path("/bin/busybox").read_bytes()
    _run(["apt-get", "download", "busybox-static"], cwd=work)
    deb = sorted(work.glob("busybox-static_*.deb"))[-1]
    _run(["dpkg-deb", "-x", str(deb), str(work / "bb")])
    return (work / "bb" / "bin" / "busybox").read_bytes()


def _host_binary(c: "Cpio", path: str) -> bool:
    """Copy a dynamically linked host binary and every library `ldd` resolves into the archive,
    each at its own path (symlinks followed). False when the binary is not installed."""
    if not Path(path).is_file():
        return False
    r = subprocess.run(["ldd", path], capture_output=True, text=True)
    if r.returncode != 0:
        return False
    files = [path]
    for line in r.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            files.append(m.group(1))
    for f in files:
        if f.lstrip("/") not in c.names:
            c.file(f, Path(f).resolve().read_bytes(), 0o755)
    return True


def _mod_name(path: Path) -> str:
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", path.name).replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        if not shutil.which("zstd"):
            raise RuntimeError("kernel modules are .ko.zst: apt-get install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def _module_chain(moddir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """[(name, plain .ko bytes)] in load order (dependencies first)."""
    index = {_mod_name(p): p for p in moddir.rglob("*.ko*") if re.search(r"\.ko(\.\w+)?$", p.name)}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            raise RuntimeError(f"module {name} not in {moddir} (built in? then drop it)")
        data = _read_module(index[name])
        m = re.search(rb"\0depends=([^\0]*)\0", data)
        for dep in (m.group(1).decode().split(",") if m else []):
            if dep:
                visit(dep.replace("-", "_"))
        order.append((name, data))

    for w in wanted:
        visit(w)
    return order


def _build(cache: Path) -> VmImage:
    work = Path(tempfile.mkdtemp(prefix="work-", dir=cache))
    try:
        deb = _download_kernel(work)
        _run(["dpkg-deb", "-x", str(deb), str(work / "k")])
        vmlinuz = sorted((work / "k" / "boot").glob("vmlinuz-*"))[-1]
        kver = vmlinuz.name[len("vmlinuz-"):]
        moddir = next(p for p in [work / "k" / "lib" / "modules" / kver,
                                  work / "k" / "usr" / "lib" / "modules" / kver] if p.is_dir())
        mods = _module_chain(moddir, NET_MODULES)

        c = Cpio()
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc",
                  "root", "lib/modules"):
            c.dir(d)
        c.chardev("dev/console", 5, 1)
        c.chardev("dev/null", 1, 3, 0o666)
        c.file("bin/busybox", _busybox(work), 0o755)
        c.symlink("bin/sh", "busybox")
        c.file("init", INIT.encode(), 0o755)
        c.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
        c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        c.file("etc/group", b"root:x:0:\n")
        for name, data in mods:
            c.file(f"lib/modules/{name}.ko", data)
        c.file("lib/modules/order", ("\n".join(n for n, _ in mods) + "\n").encode())
        binaries = [name for name, path in HOST_BINARIES.items() if _host_binary(c, path)]

        shutil.copyfile(vmlinuz, cache / "vmlinuz.tmp")
        os.replace(cache / "vmlinuz.tmp", cache / "vmlinuz")
        (cache / "base.cpio.gz.tmp").write_bytes(c.gz())
        os.replace(cache / "base.cpio.gz.tmp", cache / "base.cpio.gz")
        image = VmImage(cache / "vmlinuz", cache / "base.cpio.gz", kver, deb.name, [n for n, _ in mods],
                        binaries)
        meta = {"format": IMAGE_FORMAT, "kernel_version": kver, "package": deb.name,
                "modules": image.modules, "binaries": binaries}
        (cache / "image.json.tmp").write_text(json.dumps(meta, indent=1))
        os.replace(cache / "image.json.tmp", cache / "image.json")
        return image
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cached(cache: Path) -> VmImage | None:
    try:
        meta = json.loads((cache / "image.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != IMAGE_FORMAT:
        return None
    if any(Path(HOST_BINARIES[n]).is_file() for n in set(HOST_BINARIES) - set(meta.get("binaries", []))):
        return None  # a client installed since the build: rebuild to include it
    if not (cache / "vmlinuz").is_file() or not (cache / "base.cpio.gz").is_file():
        return None
    return VmImage(cache / "vmlinuz", cache / "base.cpio.gz", meta["kernel_version"], meta["package"],
                   meta["modules"], meta.get("binaries", []))


def build_image(cache_dir: Path = DEFAULT_CACHE) -> VmImage:
    """Build (once) and return the VM image; safe to call from concurrent processes."""
    cache = Path(cache_dir)
    image = _cached(cache)
    if image:
        return image
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _cached(cache) or _build(cache)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_initrd(image: VmImage, script: str, out: Path) -> Path:
    """Write base initramfs + a cpio holding /test.sh (0755) to `out`."""
    c = Cpio()
    if not script.startswith("#!"):
        script = "#!/bin/sh\n" + script
    c.file("test.sh", script.encode(), 0o755)
    out = Path(out)
    with open(out, "wb") as f:
        f.write(image.initrd.read_bytes())
        f.write(c.gz())
    return out


# --------------------------------------------------------------------------- boot

def parse_markers(text: str) -> dict[str, str]:
    """`GANGWAY-MARK key=value` lines -> {key: value}; a later line wins."""
    out: dict[str, str] = {}
    for m in re.finditer(MARK + r" ([A-Za-z0-9_.-]+)=([^\r\n]*)", text):
        out[m.group(1)] = m.group(2).strip()
    return out


@dataclass
class VmResult:
    output: str            # serial console (QEMU's stdout)
    returncode: int | None
    timed_out: bool
    stderr: str = ""       # QEMU's own messages
    seconds: float = 0.0   # wall time from start to exit

    def markers(self) -> dict[str, str]:
        return parse_markers(self.output)

    def __str__(self) -> str:
        return (f"VmResult(rc={self.returncode}, timed_out={self.timed_out}, {self.seconds:.1f}s)\n"
                f"--- console ---\n{self.output}\n--- qemu stderr ---\n{self.stderr}")


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def qemu_cmd(image: VmImage, initrd: Path, socket_path: str, mac: str | None = None,
             memory: int = 256, append: str = "") -> list[str]:
    # romfile= : no iPXE option ROM (faster, and nothing but the guest kernel ever talks on the link)
    dev = "virtio-net-pci,netdev=n0,romfile=" + (f",mac={mac}" if mac else "")
    return [QEMU, "-accel", "tcg", "-m", str(memory), "-smp", "1",
            "-nographic", "-nodefaults", "-no-reboot", "-no-user-config",
            "-serial", "stdio", "-monitor", "none",
            "-kernel", str(image.kernel), "-initrd", str(initrd),
            "-append", ("console=ttyS0 quiet panic=-1 " + append).strip(),
            "-device", dev,
            "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={socket_path}"]


class Vm:
    """A running VM. Always call wait() or kill() (or use as a context manager)."""

    def __init__(self, image: VmImage, *, socket_path: str, script: str, mac: str | None = None,
                 memory: int = 256, append: str = ""):
        try:
            if not stat.S_ISSOCK(os.stat(socket_path).st_mode):
                raise FileNotFoundError(f"{socket_path} is not a unix socket")
        except FileNotFoundError as e:
            # QEMU 7.2 does not fail on a missing socket (nor retry): the VM would boot with no link
            raise FileNotFoundError(f"no listening socket at {socket_path}: start gangway first") from e
        self.dir = Path(tempfile.mkdtemp(prefix="gangway-vm-"))
        initrd = make_initrd(image, script, self.dir / "initrd.gz")
        self.cmd = qemu_cmd(image, initrd, socket_path, mac, memory, append)
        self._out = open(self.dir / "console.log", "wb")
        self._err = open(self.dir / "qemu.err", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     start_new_session=True)
        self.result: VmResult | None = None

    def output(self) -> str:
        if self.result:
            return self.result.output
        return (self.dir / "console.log").read_bytes().decode(errors="replace")

    def markers(self) -> dict[str, str]:
        return parse_markers(self.output())

    def wait_marker(self, key: str, timeout: float) -> str | None:
        """Poll the console until marker `key` shows up (or the VM exits / timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.markers().get(key)
            if v is not None:
                return v
            if self.proc.poll() is not None:
                return self.markers().get(key)
            time.sleep(0.1)
        return None

    def wait(self, timeout: float = 120) -> VmResult:
        if self.result:
            return self.result
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._stop()
        return self._finish(timed_out)

    def kill(self) -> VmResult:
        if self.result:
            return self.result
        self._stop()
        return self._finish(False)

    def _stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def _finish(self, timed_out: bool) -> VmResult:
        self._out.close()
        self._err.close()
        out = (self.dir / "console.log").read_bytes().decode(errors="replace")
        err = (self.dir / "qemu.err").read_bytes().decode(errors="replace")
        self.result = VmResult(out.replace("\r\n", "\n"), self.proc.returncode, timed_out, err,
                               time.monotonic() - self.started)
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.result

    def __enter__(self) -> "Vm":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def start(image: VmImage, *, socket_path: str, script: str, mac: str | None = None, memory: int = 256,
          append: str = "") -> Vm:
    return Vm(image, socket_path=socket_path, script=script, mac=mac, memory=memory, append=append)


def boot(image: VmImage, *, socket_path: str, script: str, timeout: float = 120, mac: str | None = None,
         memory: int = 256, append: str = "") -> VmResult:
    """Boot, run `script` as /test.sh, power off; returns the console and markers."""
    vm = start(image, socket_path=socket_path, script=script, mac=mac, memory=memory, append=append)
    try:
        return vm.wait(timeout)
    finally:
        vm.kill()
