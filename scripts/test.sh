#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, and integration tests that
# run the real epochgate with real DPDK vdevs (pcap, vhost-user + virtio-user).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
# The fuzz crates are their own workspaces (scripts/fuzz.sh runs them on nightly).
cargo fmt --manifest-path nic-fuzz/Cargo.toml -- --check
cargo fmt --manifest-path vmm-shim/fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Test binaries run one after another (each integration test file is its own process with its
# own EAL); tests inside a file serialise themselves.
# The binaries first: the harness's tests (perf/tests) run epochgate next to epochgate-perf.
cargo build --workspace --bins
# The fuzz targets, built on stable so they cannot rot (libFuzzer's instrumentation comes only
# from cargo-fuzz). Each in its own target directory under target/: built into target/ itself,
# they would make the main workspace's path crates stale on every run.
cargo build --manifest-path nic-fuzz/Cargo.toml --bins --target-dir target/fuzz-build/nic
cargo build --manifest-path vmm-shim/fuzz/Cargo.toml --bins --target-dir target/fuzz-build/vmm-shim
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rm -f target/tmp/faults-summary.txt
cargo test --workspace 2>&1 | tee "$log"
# What the suite's fault campaign (perf/tests/faults.rs) did: runs, operations, restarts.
cat target/tmp/faults-summary.txt 2>/dev/null || true
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
