"""Network namespaces and TAP devices: enter a namespace (setns via ctypes; Python 3.11 has no
os.setns) and open a persistent TAP named eth0 inside it."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import struct
import subprocess

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def entered(name: str):
    """Run the block with this thread in network namespace ``name`` (/run/netns/NAME)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except FileNotFoundError:
        os.close(own)
        raise FileNotFoundError(f"network namespace {name!r} does not exist") from None
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def open_tap(netns: str, ifname: str = "eth0", offload: bool = True) -> tuple[int, bool]:
    """Open (creating if needed) a persistent TAP ``ifname`` inside ``netns``, set it up.

    Returns (fd, offload_enabled). The device outlives the fd, so a restarted bridge re-opens
    the same link and the guest keeps its addresses and routes."""
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    existed = subprocess.run(["ip", "-n", netns, "link", "show", ifname], capture_output=True).returncode == 0
    with entered(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), flags))
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # an existing device with other flags: replace it
                subprocess.run(["ip", "link", "del", ifname], check=False, capture_output=True)
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), flags))
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
            if offload:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except BaseException:
            os.close(fd)
            raise
    if not existed:
        # the same namespace always gets the same MAC, so DHCP gives it the same address again
        subprocess.run(["ip", "-n", netns, "link", "set", ifname, "address", stable_mac(netns)],
                       check=False, capture_output=True)
    subprocess.run(["ip", "-n", netns, "link", "set", ifname, "up"], check=True, capture_output=True)
    return fd, offload


def stable_mac(name: str) -> str:
    """A locally administered unicast MAC derived from a name."""
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in bytes([0x02]) + digest[:5])


def remove_tap(netns: str, ifname: str = "eth0") -> None:
    subprocess.run(["ip", "-n", netns, "link", "del", ifname], check=False, capture_output=True)
