#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, and integration tests that
# run the real epochgate with real DPDK vdevs (pcap, vhost-user + virtio-user).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Test binaries run one after another (each integration test file is its own process with its
# own EAL); tests inside a file serialise themselves.
# The binaries first: the harness's tests (perf/tests) run epochgate next to epochgate-perf.
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
