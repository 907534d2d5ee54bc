#!/usr/bin/env bash
# The control thread's CPU while epochgate is idle: utime+stime of the "eg-control" thread over
# S seconds with no session, then with N idle sessions (N protected VMs on a net_null shared
# ingress), as % of one core. A wrapper around `epochgate-perf control-idle`.
# Usage: scripts/measure-control-idle.sh [--sessions N] [--seconds S] [--epochgate PATH] [--out DIR]
#        (defaults: 64 sessions, 10 s, target/release/epochgate, perf-out)
set -euo pipefail
perf=${EPOCHGATE_PERF:-target/release/epochgate-perf}
[ -x "$perf" ] || { echo "$perf not found: cargo build --release --workspace --bins" >&2; exit 1; }
exec "$perf" control-idle "$@"
