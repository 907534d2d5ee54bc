#!/usr/bin/env bash
# What output commit costs a QEMU guest (README, "Put a QEMU VM behind epochgate"): boots the
# test guest behind epochgate once per row (unprotected; protected at 5, 25 and 100 ms with
# checkpoint requests off and on) and prints the table. As root; several minutes under TCG.
# EG_COST_BYTES sets the size of the download and of the upload (default 1 MiB), EG_COST_ROUNDS
# the rounds (default 3; the table shows medians).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --release --test qemu_guest cost_of_output_commit_for_a_guest -- --ignored --nocapture
