#!/usr/bin/env bash
# Installs the Debian packages the test suite drives (real clients and a real VM), only when
# something is missing. Needs root (the end-to-end tests do too).
set -euo pipefail
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check busybox busybox-static
check ping iputils-ping
check dig dnsutils
check curl curl
check iperf3 iperf3
check tshark tshark
check qemu-system-x86_64 qemu-system-x86
check nc netcat-openbsd
check ip iproute2
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-test-deps: missing ${need[*]} and not root; end-to-end tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
