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
cargo test --workspace
