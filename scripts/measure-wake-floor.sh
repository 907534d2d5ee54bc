#!/usr/bin/env bash
# What one thread waking another costs on this machine (same core, other core), beside a
# hand-over to a polling thread and the lateness of a timed wake-up: the floor under
# epochgate's control-path latencies (see perf/README.md "Control-path latency").
# Usage: scripts/measure-wake-floor.sh [GAP_US]   (with GAP_US: only the socket round trips,
#        that far apart, as a VMM's calls after the machine sat idle; 20000 for 40 Hz)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
gcc -O2 -Wall -Wextra -o target/wake-floor perf/c/wake_floor.c -lpthread
exec target/wake-floor "$@"
