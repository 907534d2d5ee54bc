#!/usr/bin/env bash
# The built-in demo: three VMs from generated captures, a shared ingress, the inbound path,
# egress to a pcap file, live counters; ends by itself after a few seconds (or on Ctrl-C).
# Extra arguments go to `epochgate demo` (e.g. --duration 10 --out /tmp/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --bin epochgate
exec ./target/release/epochgate demo "$@"
