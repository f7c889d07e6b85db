"""A guest that floods DISCOVERs with random MACs must not starve real guests: the flood is
answered (offers are short-lived and reclaimed), the lease table stays bounded, the dhcp log
does not grow a line per DISCOVER, and a real guest still gets its address."""
from __future__ import annotations

import os
import time

import pytest
import zmq

from bus import endpoints
from wire import dhcp as w
from wire import ipv4, udp
from wire.ethernet import BROADCAST, build_eth

pytestmark = pytest.mark.e2e


def discover(mac: bytes, xid: int) -> bytes:
    msg = w.DhcpMessage(op=w.BOOTREQUEST, xid=xid, chaddr=mac, options={w.OPT_MSG_TYPE: bytes((w.DISCOVER,))})
    body = udp.build_udp(b"\0" * 4, b"\xff" * 4, 68, 67, msg.encode())
    return build_eth(BROADCAST, mac, 0x0800, bytes(ipv4.build_ipv4(b"\0" * 4, b"\xff" * 4, 17, len(body), df=False)) + body)


def test_discover_flood_with_random_macs(lan):
    stack, guest = lan
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(endpoints.ipc(stack.run_dir, endpoints.SWITCH_IN))
    sent = 0
    deadline = time.monotonic() + 20
    while sent < 3000 and time.monotonic() < deadline:
        frames = [discover(b"\x02" + os.urandom(5), sent + i) for i in range(50)]
        push.send_multipart([b"g:flood", *frames])
        sent += len(frames)
        time.sleep(0.01)
    push.close()
    time.sleep(1)
    counters = stack.stats("dhcp")
    assert counters["dhcp.offers"] >= 250  # the flood was served, not ignored
    assert len(stack.request("dhcp", "leases")["leases"]) <= 4096
    ip = guest.dhcp()  # a real guest still gets an address during the flood's aftermath
    assert ip.startswith("192.168.65.")
    lines = (stack.run_dir / "logs" / "dhcp.log").read_text().count("\n")
    assert lines < 100, f"dhcp.log has {lines} lines after a {sent}-DISCOVER flood"
