#!/usr/bin/env bash
# The control path's round trips through the C ABI, against a real epochgate: fence of an idle
# protected VM, its commit, and ping, N times each (vmm-shim/examples/c/latency_probe.c, linked
# against libvmm_shim.a as a VMM links it). epochgate runs on net_null ports with --no-huge, so
# this needs no hardware and no hugepages; it is started and stopped by this script (by PID).
# Usage: scripts/measure-c-abi.sh [N [PING_MS [GAP_US]]]   (default 2000, 0 and 0: the shim's
#        pinger as eg_shim_connect starts it; -1: no pinger; GAP_US: the pause before each
#        fence, 20000 for a VMM checkpointing at 40 Hz; run from a built tree:
#        `source scripts/setup.sh && cargo build --release --workspace --bins`; the script
#        builds the static library itself). PROBE_WRAP="taskset -c 0" runs the probe under a
#        wrapper (here: on the CPU of epochgate's control thread, off the worker's).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
ping_ms=${2:-0}
gap_us=${3:-0}
eg=target/release/epochgate
lib=target/release/libvmm_shim.a
[ -x "$eg" ] || { echo "$eg not found: cargo build --release --workspace --bins" >&2; exit 1; }
cargo build --quiet --release -p vmm-shim --lib
dir=$(mktemp -d /tmp/eg-c-abi.XXXXXX)
cc -O2 -std=c11 -Wall -Wextra -Werror -I vmm-shim/include vmm-shim/examples/c/latency_probe.c \
    "$lib" -lpthread -ldl -lm -o "$dir/latency_probe"
cat > "$dir/epochgate.toml" <<EOF
[eal]
lcores = "0-1"
memory_mb = 512
hugepages = false
file_prefix = "eg-c-abi-$$"

[control]
socket = "$dir/control.sock"
admin_socket = "$dir/admin.sock"

[egress]
port = "net_null0,no-rx=1"

[[vm]]
name = "idle"
port = "net_null1,no-rx=1"
EOF
"$eg" run --quiet --config "$dir/epochgate.toml" > "$dir/epochgate.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    [ -S "$dir/control.sock" ] && break
    kill -0 $pid 2>/dev/null || { cat "$dir/epochgate.log" >&2; exit 1; }
    sleep 0.1
done
[ -S "$dir/control.sock" ] || { echo "epochgate did not open $dir/control.sock" >&2; exit 1; }
echo "latency_probe $dir/control.sock idle $n $ping_ms $gap_us (us; epochgate pid $pid, logs in $dir)"
${PROBE_WRAP:-} "$dir/latency_probe" "$dir/control.sock" idle "$n" "$ping_ms" "$gap_us"
