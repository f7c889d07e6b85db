"""The bridge service: links guests to the switch.

Transports: a TAP device inside a network namespace (with IFF_VNET_HDR offloads, so 64 KiB
TCP segments pass), and the QEMU stream protocol (4-byte big-endian length + frame) on a unix
socket and optionally on TCP, several VMs at once. Each link is a switch port b"g:<name>".
"""
from __future__ import annotations

import os
import socket
import struct

import zmq

from bus import endpoints
from gangway import netns
from services.common import Service
from wire import gso, vnet
from wire.ethernet import ETH_LEN, FrameError, MAX_FRAME

_LEN = struct.Struct("!I")
READ_BATCH = 64
MAX_PENDING = 4 * 1024 * 1024  # bytes queued to a slow stream peer before frames are dropped


class Link:
    """One guest link = one switch port."""

    def __init__(self, bridge: "BridgeService", port: bytes):
        self.bridge = bridge
        self.port = port

    def deliver(self, frames: list, partial: bool = False) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TapLink(Link):
    def __init__(self, bridge, netns_name: str):
        super().__init__(bridge, f"g:tap:{netns_name}".encode())
        self.netns = netns_name
        self.mtu = bridge.mtu
        self.fd, self.offload = netns.open_tap(netns_name, offload=bridge.cfg["bridge"]["tap_offload"])
        import subprocess
        subprocess.run(["ip", "-n", netns_name, "link", "set", "eth0", "mtu", str(self.mtu)], check=False, capture_output=True)
        bridge.loop.add_reader(self.fd, self.on_readable)

    def on_readable(self) -> None:
        frames, partial = [], []
        fd, b = self.fd, self.bridge
        for _ in range(READ_BATCH):
            try:
                buf = os.read(fd, MAX_FRAME + vnet.VNET_LEN)
            except BlockingIOError:
                break
            except OSError as e:
                b.drops.drop("tap_read_error", error=str(e))
                break
            if not self.offload:
                frames.append(buf)
                continue
            try:
                frame, is_partial = vnet.decode(buf, keep_partial_tcp4=True)
            except FrameError as e:
                b.drops.drop("bad_vnet_frame", error=str(e))
                continue
            (partial if is_partial else frames).append(frame)
        if frames or partial:
            b.count("frames_from_guests", len(frames) + len(partial))
            b.send_frames(frames, self.port)
            b.send_frames(partial, self.port, partial=True)

    def deliver(self, frames: list, partial: bool = False) -> None:
        fd, b = self.fd, self.bridge
        for frame in frames:
            try:
                if self.offload:
                    hdr = vnet.encode_header_partial(frame, self.mtu) if partial else vnet.encode_header(frame, self.mtu)
                    os.writev(fd, (hdr, frame))
                elif len(frame) > self.mtu + ETH_LEN:
                    for seg in gso.segment(frame, self.mtu):
                        os.write(fd, seg)
                else:
                    os.write(fd, vnet.complete_partial(frame) if partial else frame)
            except FrameError as e:
                b.drops.drop("unsendable_frame", error=str(e))
            except BlockingIOError:
                b.drops.drop("tap_full")
            except OSError as e:
                b.drops.drop("tap_write_error", error=str(e))
        b.count("frames_to_guests", len(frames))

    def close(self) -> None:
        self.bridge.loop.remove_reader(self.fd)
        os.close(self.fd)


class StreamLink(Link):
    """A QEMU `-netdev stream` peer: 4-byte big-endian length, then the frame."""

    def __init__(self, bridge, sock: socket.socket, name: str):
        super().__init__(bridge, f"g:{name}".encode())
        self.sock = sock
        self.mtu = bridge.mtu
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        sock.setblocking(False)
        bridge.loop.add_reader(sock, self.on_readable)

    def on_readable(self) -> None:
        b = self.bridge
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            data = b""
            b.log.info("link_error", port=self.port.decode(), error=str(e))
        if not data:
            b.remove_link(self, "peer closed")
            return
        rbuf = self.rbuf
        rbuf += data
        frames = []
        off = 0
        n = len(rbuf)
        while n - off >= 4:
            (flen,) = _LEN.unpack_from(rbuf, off)
            if flen > MAX_FRAME or flen < ETH_LEN:
                b.drops.drop("bad_stream_length", length=flen)
                b.remove_link(self, f"bad frame length {flen}")
                return
            if n - off - 4 < flen:
                break
            frames.append(bytes(rbuf[off + 4 : off + 4 + flen]))
            off += 4 + flen
        del rbuf[:off]
        if frames:
            b.count("frames_from_guests", len(frames))
            b.send_frames(frames, self.port)

    def deliver(self, frames: list, partial: bool = False) -> None:
        b = self.bridge
        out = self.wbuf
        for frame in frames:
            try:
                if len(frame) > self.mtu + ETH_LEN:
                    pieces = gso.segment(frame, self.mtu)  # computes every checksum itself
                else:
                    pieces = (vnet.complete_partial(frame) if partial else frame,)
            except FrameError as e:
                b.drops.drop("unsendable_frame", error=str(e))
                continue
            for p in pieces:
                if len(out) > MAX_PENDING:
                    b.drops.drop("stream_backlog")
                    break
                out += _LEN.pack(len(p))
                out += p
        b.count("frames_to_guests", len(frames))
        self.flush()

    def flush(self) -> None:
        if not self.wbuf:
            return
        try:
            n = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self.bridge.remove_link(self, str(e))
            return
        del self.wbuf[:n]
        if self.wbuf:
            self.bridge.loop.add_writer(self.sock, self.flush)
        else:
            self.bridge.loop.remove_writer(self.sock)

    def close(self) -> None:
        self.bridge.loop.remove_reader(self.sock)
        self.bridge.loop.remove_writer(self.sock)
        self.sock.close()


class BridgeService(Service):
    name = "bridge"

    def __init__(self, run_dir, cfg=None):
        super().__init__(run_dir, cfg)
        self.mtu = self.cfg["network"]["mtu"]
        self.links: dict[bytes, Link] = {}
        self.listeners = []
        self.next_id = 0

    def start(self) -> None:
        bcfg = self.cfg["bridge"]
        path = self.run_dir / bcfg["qemu_socket"]
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(str(path))
        os.chmod(path, 0o600)
        self._listen(ls, "qemu")
        if bcfg["qemu_tcp"]:
            host, _, port = bcfg["qemu_tcp"].rpartition(":")
            ts = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            ts.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ts.bind((host.strip("[]"), int(port)))
            self._listen(ts, "qemutcp")
        for ns in bcfg["taps"]:
            try:
                self.add_link(TapLink(self, ns))
            except OSError as e:
                self.log.error("tap_attach_failed", netns=ns, error=str(e))

    def _listen(self, ls: socket.socket, kind: str) -> None:
        ls.listen(16)
        ls.setblocking(False)
        self.listeners.append(ls)

        def accept() -> None:
            try:
                conn, _ = ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            self.next_id += 1
            self.add_link(StreamLink(self, conn, f"{kind}{self.next_id}"))

        self.loop.add_reader(ls, accept)

    def add_link(self, link: Link) -> None:
        self.links[link.port] = link
        self.sub.setsockopt(zmq.SUBSCRIBE, endpoints.topic(link.port))
        self.log.info("link_up", port=link.port.decode())

    def remove_link(self, link: Link, reason: str) -> None:
        if self.links.pop(link.port, None) is None:
            return
        self.sub.setsockopt(zmq.UNSUBSCRIBE, endpoints.topic(link.port))
        link.close()
        self.log.info("link_down", port=link.port.decode(), reason=reason)

    def on_message(self, parts: list) -> None:
        link = self.links.get(parts[0][:-1])
        if link is None:
            self.count("drop.no_link")
            return
        if len(parts) > 1 and not parts[1]:
            link.deliver(parts[2:], partial=True)
        else:
            link.deliver(parts[1:])

    def handle_links(self, msg) -> dict:
        return {"links": sorted(p.decode() for p in self.links)}

    def stop(self) -> None:
        for link in list(self.links.values()):
            link.close()


if __name__ == "__main__":
    BridgeService.main()
