#!/usr/bin/env bash
# The built-in demo: epochgate with four VMs fed by the perf harness over vhost-user (two
# protected at 40 Hz by simulated VMMs, one pass-through, one rate-limited), a live view, and a
# check of every frame against its epoch's commit. About 20 s; Ctrl-C ends it early.
# Extra arguments go to `epochgate-perf demo` (e.g. --seconds 60 --out /tmp/demo).
# The offline pcap demo of earlier versions is still there: ./target/release/epochgate demo
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --workspace --bins
exec ./target/release/epochgate-perf demo --out demo-out "$@"
