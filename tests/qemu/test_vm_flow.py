"""flow end to end from a real VM (QEMU TCG over the stream socket; see tests/qemu/image.py).

The VM's own kernel TCP/IP stack, busybox and the Debian clients copied into the image
(`iperf3`, OpenBSD `nc`) against servers on host loopback (through the host alias) and in a
"corp" namespace the test creates (reached over a host route, as through a VPN):
iperf3 both ways, 500 concurrent connections, UDP echo and port unreachable, the VPN case,
and a `kill -9` of flow under a live connection.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.e2e.flow_helpers import Corp, Proc, free_port, http_server, iperf3_server, udp_echo, wait_for
from tests.qemu.image import DHCP_CMD, boot, qemu_available, start

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (gangway stack)"),
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86_64 not installed"),
]

HOST_ALIAS = "192.168.65.254"
LEASE = f"""{DHCP_CMD} > /tmp/udhcpc.out 2>&1
echo "GANGWAY-MARK dhcp_rc=$?"
"""


def _need(image, name: str) -> None:
    if not image.has(name):
        pytest.skip(f"{name} is not installed on the host, so not in the VM image")


def test_vm_iperf3_both_directions(make_stack, image):
    """iperf3 from the VM to an iperf3 server on host loopback, both directions, completes.
    (Throughput is measured in bench/, not asserted here.)"""
    _need(image, "iperf3")
    stack = make_stack().up()
    port = free_port()
    srv = iperf3_server(port)
    try:
        script = LEASE + f"""
iperf3 -c {HOST_ALIAS} -p {port} -t 2 -f m > /tmp/up.out 2>&1
echo "GANGWAY-MARK up_rc=$?"
echo "GANGWAY-MARK up=$(grep receiver /tmp/up.out | awk '{{print $7, $8}}')"
iperf3 -c {HOST_ALIAS} -p {port} -t 2 -f m -R > /tmp/down.out 2>&1
echo "GANGWAY-MARK down_rc=$?"
echo "GANGWAY-MARK down=$(grep receiver /tmp/down.out | awk '{{print $7, $8}}')"
cat /tmp/up.out /tmp/down.out
"""
        res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=120,
                   mac="52:54:00:6a:78:01")
    finally:
        srv.kill()
        srv.wait()
    m = res.markers()
    print(f"VM iperf3 (TCG guest) up {m.get('up')}, down {m.get('down')}")
    assert m.get("dhcp_rc") == "0", res
    assert m.get("up_rc") == "0" and m.get("up", "").endswith("Mbits/sec"), res
    assert m.get("down_rc") == "0" and m.get("down", "").endswith("Mbits/sec"), res


BARRIER_ECHO = r'''
import asyncio, sys
want, limit = int(sys.argv[1]), float(sys.argv[2])
state = {"open": 0, "peak": 0, "done": 0}
async def main():
    everyone = asyncio.Event()
    async def handle(r, w):
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])
        if state["open"] >= want:
            everyone.set()
        try:
            line = await r.readline()
            try:  # nobody is answered until `want` connections are open at once
                await asyncio.wait_for(everyone.wait(), limit)
            except asyncio.TimeoutError:
                pass
            w.write(line)
            await w.drain()
            w.close()
            state["done"] += 1
        except ConnectionError:
            pass
        finally:
            state["open"] -= 1
        print("peak", state["peak"], "done", state["done"], flush=True)
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=2048)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
'''


def test_vm_500_concurrent_connections(make_stack, image):
    """500 busybox `nc` in the VM at once; the host server answers none of them until all 500
    are open together, so every one completing proves 500 concurrent flows."""
    stack = make_stack().up()
    with Proc([sys.executable, "-c", BARRIER_ECHO, "500", "90"]) as srv:
        script = LEASE + f"""
mkdir -p /tmp/c
i=0
while [ $i -lt 500 ]; do
  echo "line-$i" > /tmp/c/in$i
  i=$((i+1))
done
i=0
while [ $i -lt 500 ]; do
  nc {HOST_ALIAS} {srv.port} < /tmp/c/in$i > /tmp/c/out$i 2>&1 &
  i=$((i+1))
done
wait
ok=0
i=0
while [ $i -lt 500 ]; do
  [ "$(cat /tmp/c/out$i)" = "line-$i" ] && ok=$((ok+1))
  i=$((i+1))
done
echo "GANGWAY-MARK ok=$ok"
"""
        res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=180,
                   mac="52:54:00:6a:78:02", memory=512)
        srv.p.kill()
        out = srv.p.stdout.read()
    m = res.markers()
    assert m.get("dhcp_rc") == "0", res
    assert m.get("ok") == "500", (out[-500:], res)
    assert "peak 500" in out, out[-500:]


def test_vm_udp_echo_and_port_unreachable(make_stack, image):
    """OpenBSD nc in the VM: a UDP round trip to host loopback; `nc -vzu` to a closed host
    port fails at once (ICMP port unreachable from gangway, surfaced as ECONNREFUSED)."""
    _need(image, "nc.openbsd")
    stack = make_stack().up()
    closed = free_port()
    with udp_echo() as echo:
        script = LEASE + f"""
(echo udp-hello; sleep 3) | nc.openbsd -u -w 2 {HOST_ALIAS} {echo.port} > /tmp/udp.out 2>&1
echo "GANGWAY-MARK udp=$(head -n 1 /tmp/udp.out)"
t0=$(cut -d' ' -f1 /proc/uptime)
nc.openbsd -vzu -w 5 {HOST_ALIAS} {closed} > /tmp/z.out 2>&1
echo "GANGWAY-MARK closed_rc=$?"
echo "GANGWAY-MARK closed_t1=$(cut -d' ' -f1 /proc/uptime)"
echo "GANGWAY-MARK closed_t0=$t0"
"""
        res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=90,
                   mac="52:54:00:6a:78:03")
    m = res.markers()
    assert m.get("dhcp_rc") == "0", res
    assert m.get("udp") == "udp-hello", res
    assert m.get("closed_rc") == "1", res
    assert float(m["closed_t1"]) - float(m["closed_t0"]) < 3.0, res  # not the 5 s timeout
    assert stack.stats("flow").get("udp_port_unreachable", 0) >= 1


def test_vm_reaches_corp_network_through_host_route(make_stack, image, tmp_path):
    """The VPN case: a namespace reachable only over a veth route on the host; the VM, whose
    only route is the gateway, fetches a page from it and pings it."""
    stack = make_stack().up()
    corp = Corp()
    try:
        (tmp_path / "corp.txt").write_text("corp intranet\n")
        with http_server(tmp_path, bind=corp.ip, netns=corp.name) as srv:
            script = LEASE + f"""
echo "GANGWAY-MARK routes=$(ip route | wc -l)"
echo "GANGWAY-MARK page=$(wget -q -O - http://{corp.ip}:{srv.port}/corp.txt 2>&1)"
ping -c 2 -W 2 {corp.ip} > /tmp/ping.out 2>&1
echo "GANGWAY-MARK ping_rc=$?"
"""
            res = boot(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, timeout=90,
                       mac="52:54:00:6a:78:04")
    finally:
        corp.close()
    m = res.markers()
    assert m.get("dhcp_rc") == "0", res
    assert m.get("routes") == "2", res  # the subnet and the default via the gateway, nothing else
    assert m.get("page") == "corp intranet", res
    assert m.get("ping_rc") == "0", res


HOLD_SERVER = r'''
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    f = c.makefile("rb")
    for line in f:
        print("got", line.decode().strip(), flush=True)
        c.sendall(line)
    print("eof", flush=True)
    c.close()
'''


def test_vm_kill9_flow_live_connection_sees_rst_new_ones_work(make_stack, image):
    """A VM connection is open through flow; flow is killed with SIGKILL and restarted by
    supervisord. The VM's next segment on the old connection gets RST (the VM kernel's
    EstabResets counter moves); a new connection works."""
    stack = make_stack().up()
    go = free_port()  # the VM polls it: refused until the test listens there after the restart
    with Proc([sys.executable, "-u", "-c", HOLD_SERVER]) as hold:
        lines: list[str] = []

        def read() -> None:
            for line in hold.p.stdout:
                lines.append(line.strip())

        threading.Thread(target=read, daemon=True).start()
        # the kernel's own count of established connections that got RST (nc says nothing)
        resets = "$(awk '$1 == \"Tcp:\" && $2 ~ /^[0-9]/ {print $9}' /proc/net/snmp)"
        script = LEASE + f"""
echo "GANGWAY-MARK resets0={resets}"
( echo first
  while ! nc -w 2 {HOST_ALIAS} {go} </dev/null 2>/dev/null | grep -q go; do sleep 0.3; done
  echo second
  sleep 3 ) | nc {HOST_ALIAS} {hold.port} > /tmp/hold.out 2>&1
echo "GANGWAY-MARK resets1={resets}"
echo "GANGWAY-MARK hold_out=$(tr '\\n' '|' < /tmp/hold.out)"
echo third | nc {HOST_ALIAS} {hold.port} > /tmp/new.out 2>&1 &
sleep 2
echo "GANGWAY-MARK new_out=$(cat /tmp/new.out)"
"""
        vm = start(image, socket_path=str(stack.run_dir / "qemu.sock"), script=script, mac="52:54:00:6a:78:05")
        gosrv = None
        try:
            assert wait_for(lambda: "got first" in lines, 60), (lines, vm.output())
            old = stack.kill9("flow")
            stack.wait_restarted("flow", old)
            assert wait_for(lambda: "s:flow" in stack.request("switch", "stats")["ports"], 10)
            gosrv = subprocess.Popen([sys.executable, "-c", (
                "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                f"s.bind(('127.0.0.1',{go}));s.listen(64)\n"
                "while True:\n c,_=s.accept();c.sendall(b'go\\n');c.close()\n")])
            res = vm.wait(90)
        finally:
            vm.kill()
            if gosrv:
                gosrv.kill()
                gosrv.wait()
    m = res.markers()
    assert m.get("dhcp_rc") == "0", res
    assert m.get("hold_out") == "first|", res  # "second" was never echoed
    assert int(m["resets1"]) - int(m["resets0"]) >= 1, res  # the old connection was reset
    assert "got second" not in lines, lines
    assert m.get("new_out") == "third", res
    assert "got third" in lines, lines
    assert stack.stats("flow").get("tcp_rst_no_flow", 0) >= 1
