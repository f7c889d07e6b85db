"""End to end with a real VM: QEMU (TCG) whose only NIC is gangway's stream socket.

The guest is a Debian cloud kernel + busybox initramfs (tests/qemu/image.py, cached in
build/vm). It runs busybox udhcpc against gangway's DHCP server, pings the gateway, and
fetches a file from a server on host loopback through the host alias.
"""
from __future__ import annotations

import hashlib
import http.server
import ipaddress
import os
import threading

import pytest

from tests.qemu.image import DHCP_CMD, boot, qemu_available

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (gangway stack)"),
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 not installed"),
]

SUBNET = ipaddress.IPv4Network("192.168.65.0/24")
GATEWAY = "192.168.65.1"
HOST_ALIAS = "192.168.65.254"

DHCP_SCRIPT = f"""
{DHCP_CMD} > /tmp/udhcpc.out 2>&1
echo "GANGWAY-MARK dhcp_rc=$?"
echo "GANGWAY-MARK dhcp_uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "GANGWAY-MARK ip=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}')"
echo "GANGWAY-MARK router=$(ip route show default | awk '{{print $3; exit}}')"
echo "GANGWAY-MARK nameserver=$(awk '/^nameserver/ {{print $2}}' /etc/resolv.conf | tr '\\n' ' ')"
echo "GANGWAY-MARK mtu=$(cat /sys/class/net/eth0/mtu)"
"""


def test_vm_dhcp_route_dns_and_ping_gateway(make_stack, image):
    stack = make_stack().up()
    mac = "52:54:00:6a:77:01"
    script = DHCP_SCRIPT + f"""
ping -c 3 -W 2 {GATEWAY} > /tmp/ping.out 2>&1
echo "GANGWAY-MARK ping_rc=$?"
echo "GANGWAY-MARK ping_rx=$(grep -o '[0-9]* packets received' /tmp/ping.out | cut -d' ' -f1)"
"""
    res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=60, mac=mac)
    m = res.markers()
    print(f"VM wall {res.seconds:.1f}s, kernel up at {m.get('uptime')}s, leased at {m.get('dhcp_uptime')}s")
    assert not res.timed_out and m.get("done") == "1", res
    assert m.get("dhcp_rc") == "0", res
    addr = ipaddress.IPv4Interface(m["ip"])
    assert addr.ip in SUBNET and addr.network == SUBNET, res
    assert m["router"] == GATEWAY, res
    assert m["nameserver"].split() == [GATEWAY], res
    assert m["mtu"] == "1500", res
    assert m.get("ping_rc") == "0" and m.get("ping_rx") == "3", res
    leases = stack.request("dhcp", "leases")["leases"]
    mine = [le for le in leases if str(le.get("ip")) == str(addr.ip)]
    assert mine, leases
    if "mac" in mine[0]:
        assert str(mine[0]["mac"]).lower() == mac


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def test_vm_fetches_file_from_host_loopback_via_alias(make_stack, image, tmp_path):
    payload = os.urandom(256 * 1024)
    (tmp_path / "blob").write_bytes(payload)
    handler = lambda *a, **k: _Files(*a, directory=str(tmp_path), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        stack = make_stack().up()
        port = srv.server_address[1]
        script = DHCP_SCRIPT + f"""
wget -q -O - http://{HOST_ALIAS}:{port}/blob > /tmp/blob 2>/tmp/wget.err
echo "GANGWAY-MARK wget_rc=$?"
echo "GANGWAY-MARK size=$(wc -c < /tmp/blob)"
echo "GANGWAY-MARK md5=$(md5sum /tmp/blob | cut -d' ' -f1)"
"""
        res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=60,
                   mac="52:54:00:6a:77:02")
    finally:
        srv.shutdown()
        srv.server_close()
    m = res.markers()
    assert not res.timed_out and m.get("dhcp_rc") == "0", res
    assert m.get("wget_rc") == "0", res
    assert m.get("size") == str(len(payload)), res
    assert m.get("md5") == hashlib.md5(payload).hexdigest(), res


def test_vm_nslookup_local_names(make_stack, image):
    """busybox nslookup in the VM: host and gateway names, an alias, the VM's own DHCP name,
    PTR of the host alias and of the VM itself, static TXT/MX/SRV records from config and a
    record added at run time with `gangway dns add`."""
    stack = make_stack({"dns": {"records": [
        {"name": "db.gangway.internal", "type": "A", "value": "192.168.65.9"},
        {"name": "db.gangway.internal", "type": "TXT", "value": "role=primary"},
        {"name": "gangway.internal", "type": "MX", "value": "10 db.gangway.internal"},
        {"name": "_pg._tcp.gangway.internal", "type": "SRV", "value": "0 5 5432 db.gangway.internal"},
    ]}}).up()
    stack.gangway("dns", "add", "cache.gangway.internal", "A", "192.168.65.77")
    script = DHCP_SCRIPT.replace("-s /etc/udhcpc.script", "-x hostname:vmguest -s /etc/udhcpc.script") + """
for n in host.gangway.internal gateway.gangway.internal host.docker.internal vmguest.gangway.internal vmguest \
         db.gangway.internal cache.gangway.internal; do
  a=$(nslookup $n 2>/dev/null | awk '/^Address/ && !/#53/ {print $NF}' | tail -n 1)
  echo "GANGWAY-MARK ns_$(echo $n | tr . _)=$a"
done
me=$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
echo "GANGWAY-MARK ptr_host=$(nslookup 192.168.65.254 2>/dev/null | awk '/name = / {print $NF}')"
echo "GANGWAY-MARK ptr_me=$(nslookup $me 2>/dev/null | awk '/name = / {print $NF}')"
echo "GANGWAY-MARK txt=$(nslookup -type=txt db.gangway.internal 2>/dev/null | awk -F'text = ' '/text = / {print $2}')"
echo "GANGWAY-MARK mx=$(nslookup -type=mx gangway.internal 2>/dev/null | awk -F'mail exchanger = ' '/mail exchanger = / {print $2}')"
echo "GANGWAY-MARK srv=$(nslookup -type=srv _pg._tcp.gangway.internal 2>/dev/null | awk -F'service = ' '/service = / {print $2}')"
"""
    res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=60,
               mac="52:54:00:6a:77:03")
    m = res.markers()
    assert m.get("done") == "1" and m.get("dhcp_rc") == "0", res
    me = str(ipaddress.IPv4Interface(m["ip"]).ip)
    assert m["ns_host_gangway_internal"] == HOST_ALIAS, res
    assert m["ns_gateway_gangway_internal"] == GATEWAY, res
    assert m["ns_host_docker_internal"] == HOST_ALIAS, res
    assert m["ns_vmguest_gangway_internal"] == me, res
    assert m["ns_vmguest"] == me, res  # the bare name through the search domain from DHCP
    assert m["ns_db_gangway_internal"] == "192.168.65.9", res
    assert m["ns_cache_gangway_internal"] == "192.168.65.77", res  # added at run time
    assert m["ptr_host"].rstrip(".") == "host.gangway.internal", res
    assert m["ptr_me"].rstrip(".") == "vmguest.gangway.internal", res
    assert m["txt"].strip('"') == "role=primary", res
    assert m["mx"].rstrip(".") == "10 db.gangway.internal", res
    assert m["srv"].rstrip(".") == "0 5 5432 db.gangway.internal", res


class _Blob(http.server.BaseHTTPRequestHandler):
    """GET serves the test's blob."""
    blob = b""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.blob)))
        self.end_headers()
        self.wfile.write(self.blob)


def test_vm_tcp_both_ways_refused_port_and_ping_host(make_stack, image):
    """Through flow from a real VM: 100 MiB down (HTTP) and up (nc) with matching sha256, a
    closed host port refused at once, ping of the host alias."""
    import socket as _s
    _Blob.blob = os.urandom(100 * 1024 * 1024)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blob)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with _s.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    sink = _s.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(1)
    sink_port = sink.getsockname()[1]
    uploaded = {}

    def drain():  # what the VM uploads: until EOF, hashed
        conn, _ = sink.accept()
        h, n = hashlib.sha256(), 0
        while chunk := conn.recv(1 << 20):
            h.update(chunk)
            n += len(chunk)
        conn.close()
        uploaded.update(sha256=h.hexdigest(), size=n)

    threading.Thread(target=drain, daemon=True).start()
    try:
        stack = make_stack().up()
        port = srv.server_address[1]
        script = DHCP_SCRIPT + f"""
wget -q -O /tmp/blob http://{HOST_ALIAS}:{port}/blob 2>/tmp/wget.err
echo "GANGWAY-MARK get_rc=$?"
echo "GANGWAY-MARK get_sha256=$(sha256sum /tmp/blob | cut -d' ' -f1)"
nc -w 2 {HOST_ALIAS} {sink_port} < /tmp/blob
echo "GANGWAY-MARK up_rc=$?"
t0=$(cut -d' ' -f1 /proc/uptime)
nc {HOST_ALIAS} {closed} </dev/null >/tmp/nc.out 2>&1
echo "GANGWAY-MARK nc_rc=$?"
echo "GANGWAY-MARK nc_t1=$(cut -d' ' -f1 /proc/uptime)"
echo "GANGWAY-MARK nc_t0=$t0"
echo "GANGWAY-MARK nc_msg=$(tr ' ' _ </tmp/nc.out)"
ping -c 2 -W 2 {HOST_ALIAS} >/tmp/ping.out 2>&1
echo "GANGWAY-MARK ping_host_rc=$?"
"""
        res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=240,
                   mac="52:54:00:6a:77:04", memory=512)  # the blob lives in the VM's tmpfs
    finally:
        srv.shutdown()
        srv.server_close()
        sink.close()
    m = res.markers()
    sha = hashlib.sha256(_Blob.blob).hexdigest()
    assert m.get("dhcp_rc") == "0" and m.get("get_rc") == "0", res
    assert m.get("get_sha256") == sha, res
    assert uploaded == {"sha256": sha, "size": len(_Blob.blob)}, (uploaded, res)
    assert m.get("nc_rc") != "0" and "refused" in m.get("nc_msg", "").lower(), res
    assert float(m["nc_t1"]) - float(m["nc_t0"]) < 2.0, res
    assert m.get("ping_host_rc") == "0", res
