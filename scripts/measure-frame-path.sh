#!/usr/bin/env bash
# A guest's frame through a real epochgate, timed through the C ABI: immediate frame ->
# checkpoint request at the shim, and commit -> the frame on the wire
# (vmm-shim/examples/c/frame_probe.c, linked against libvmm_shim.a as a VMM links it). The
# protected VM's port and the egress are tap interfaces this script makes (and deletes); the
# probe sends into one and watches the other with AF_PACKET, so this needs root. Nothing
# leaves the machine: the taps are not bridged or routed anywhere. epochgate runs with
# --no-huge and is started and stopped by this script (by PID).
# Usage: scripts/measure-frame-path.sh [N [GAP_US]]   (default 2000 and 0: GAP_US is the pause
#        before each frame, 20000 a guest that sends once per 40 Hz epoch; run from a built tree:
#        `source scripts/setup.sh && cargo build --release --workspace --bins`; the script
#        builds the static library itself). PROBE_WRAP="taskset -c 0" runs the probe under a
#        wrapper (here: on the CPU of epochgate's control thread, off the worker's).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
gap_us=${2:-0}
eg=${EPOCHGATE:-target/release/epochgate}
lib=${SHIM_LIB:-target/release/libvmm_shim.a}
[ "$(id -u)" = 0 ] || { echo "measure-frame-path.sh: needs root (tap interfaces, AF_PACKET)" >&2; exit 1; }
[ -x "$eg" ] || { echo "$eg not found: cargo build --release --workspace --bins" >&2; exit 1; }
[ -n "${SHIM_LIB:-}" ] || cargo build --quiet --release -p vmm-shim --lib
dir=$(mktemp -d /tmp/eg-frame-path.XXXXXX)
cc -O2 -std=c11 -Wall -Wextra -Werror -I vmm-shim/include vmm-shim/examples/c/frame_probe.c \
    "$lib" -lpthread -ldl -lm -o "$dir/frame_probe"
in_if="egpi$$"
out_if="egpo$$"
pid=
cleanup() {
    [ -z "$pid" ] || { kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
    ip link del "$in_if" 2>/dev/null || true
    ip link del "$out_if" 2>/dev/null || true
}
trap cleanup EXIT
# The taps exist before epochgate attaches to them (multi-queue, as DPDK's tap driver makes
# them), with IPv6 off, so the kernel sends nothing of its own into them.
for t in "$in_if" "$out_if"; do
    ip tuntap add dev "$t" mode tap multi_queue
    echo 1 > "/proc/sys/net/ipv6/conf/$t/disable_ipv6"
done
cat > "$dir/epochgate.toml" <<CFG
[eal]
lcores = "0-1"
memory_mb = 512
hugepages = false
file_prefix = "eg-frame-path-$$"

[control]
socket = "$dir/control.sock"
admin_socket = "$dir/admin.sock"

[egress]
port = "net_tap1,iface=$out_if"

[[vm]]
name = "probe"
mac = "52:54:00:00:00:42"
port = "net_tap0,iface=$in_if"
CFG
"$eg" run --quiet --config "$dir/epochgate.toml" > "$dir/epochgate.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
    [ -S "$dir/control.sock" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$dir/epochgate.log" >&2; exit 1; }
    sleep 0.1
done
[ -S "$dir/control.sock" ] || { echo "epochgate did not open $dir/control.sock" >&2; exit 1; }
ip link set "$in_if" up
ip link set "$out_if" up
echo "frame_probe $dir/control.sock probe $n $in_if $out_if $gap_us (us; epochgate pid $pid, logs in $dir)"
${PROBE_WRAP:-} "$dir/frame_probe" "$dir/control.sock" probe "$n" "$in_if" "$out_if" "$gap_us"
