#!/usr/bin/env bash
# Installs what epochgate needs on Debian 12, idempotently, and reserves hugepages when it can.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again and again.
set -euo pipefail

# tcpdump: tests/classify_cli.rs captures real loopback TCP traffic; iproute2: ip, ss.
PACKAGES=(dpdk dpdk-dev libdpdk-dev clang libclang-dev pkg-config gcc tcpdump iproute2)
# g++: the fuzz targets' libfuzzer-sys compiles libFuzzer (C++); scripts/test.sh builds them.
PACKAGES+=(g++)
# The operator surface's tests: prometheus (promtool) and curl for tests/metrics_cli.rs; tmux for
# tests/top_tmux.rs; resource-agents (ocf-shellfuncs, ocf-tester) and libxml2-utils (the xmllint
# ocf-tester checks meta-data with) for tests/ocf_agent.rs; systemd (systemd-analyze) for
# tests/systemd_unit.rs.
PACKAGES+=(prometheus curl tmux resource-agents libxml2-utils systemd)
# tests/qemu_guest.rs: a QEMU guest (its kernel and busybox are downloaded by scripts/guest.sh),
# a veth pair's offloads (ethtool) and the peer's HTTP server (python3).
PACKAGES+=(qemu-system-x86 ethtool python3)
HUGEPAGES_WANTED=512   # 2 MB pages: 1 GB, enough for epochgate and a test peer

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "setup: need root for: $*" >&2; return 1; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
    echo "setup: no Rust toolchain (cargo) found; install Rust >= 1.85 (rustup) and run again" >&2
    exit 1
fi

# Hugepages: raise the reservation to HUGEPAGES_WANTED if it is lower (never lower it), and make
# sure hugetlbfs is mounted. If the kernel refuses, epochgate runs with --no-huge instead.
nr=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
if [ -w "$nr" ] || [ "$(id -u)" -eq 0 ]; then
    have=$(cat "$nr" 2>/dev/null || echo 0)
    if [ "$have" -lt "$HUGEPAGES_WANTED" ]; then
        echo "$HUGEPAGES_WANTED" | as_root tee "$nr" >/dev/null 2>&1 || true
    fi
    # By mount point and type: the device field is whatever the mount named ("nodev", "none").
    if ! awk '$2 == "/dev/hugepages" && $3 == "hugetlbfs" { found = 1 } END { exit !found }' /proc/mounts; then
        as_root mkdir -p /dev/hugepages
        as_root mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true
    fi
fi
free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
echo "setup: DPDK $(pkg-config --modversion libdpdk), $(cargo --version), ${free} free 2 MB hugepages"
