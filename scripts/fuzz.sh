#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each and says, per target, how many inputs it ran and
# whether it crashed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60. TARGETs are any of
#   classify capture config admin   (nic-fuzz: the frame classifier, the pcap/pcapng reader, the
#                                    config loader, the admin request framing and parser)
#   decode                          (vmm-shim/fuzz: the control protocol decoders)
# and default to all of them. Needs the nightly toolchain (libFuzzer's sanitizer flags); installs
# cargo-fuzz if it is missing. Each target starts from its committed seeds
# (<crate>/corpus/<target>/seed-*) plus whatever earlier runs added there, and keeps what it
# finds; a crash leaves its input in <crate>/artifacts/<target>/ (replay it with
# `cargo +nightly fuzz run --fuzz-dir <crate> <target> <file>`). Exit 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
all=(classify capture config admin decode)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

fuzz_dir() {
    case $1 in
        classify | capture | config | admin) echo nic-fuzz ;;
        decode) echo vmm-shim/fuzz ;;
        *) return 1 ;;
    esac
}
for t in "${targets[@]}"; do
    fuzz_dir "$t" >/dev/null || { echo "fuzz: unknown target $t (one of ${all[*]})" >&2; exit 2; }
done

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# epochgate's build script needs DPDK's headers (pkg-config libdpdk): scripts/setup.sh.
pkg-config --exists libdpdk || source scripts/setup.sh

crashed=0
summary=()
for t in "${targets[@]}"; do
    dir=$(fuzz_dir "$t")
    mkdir -p "$dir/corpus/$t" "$dir/artifacts/$t"
    before=$(find "$dir/artifacts/$t" -type f | wc -l)
    log="$dir/artifacts/$t.log"
    echo "fuzz: $t for ${seconds}s ($dir, log $log)"
    # -rss_limit_mb: a header's claimed length must never make a target allocate more than this.
    set +e
    cargo +nightly fuzz run --fuzz-dir "$dir" "$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=1024 -timeout=10 \
        >"$log" 2>&1
    rc=$?
    set -e
    runs=$(awk '/stat::number_of_executed_units:/ { n = $2 } END { print n + 0 }' "$log")
    new=$(($(find "$dir/artifacts/$t" -type f | wc -l) - before))
    if [ "$rc" -ne 0 ] && [ "$new" -eq 0 ] && ! grep -q "^INFO: Seed:" "$log"; then
        crashed=1
        summary+=("$t: did not run (exit $rc): see $log")
        tail -5 "$log" | sed 's/^/    /'
    elif [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
        crashed=1
        summary+=("$t: $runs executions, CRASHED (exit $rc, $new new artifact(s) in $dir/artifacts/$t/)")
        grep -m1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|error(\[E[0-9]+\])?:" "$log" |
            sed 's/^/    /' || tail -5 "$log" | sed 's/^/    /'
    else
        summary+=("$t: $runs executions, 0 crashes")
    fi
done
echo "fuzz: ${seconds}s per target"
printf '  %s\n' "${summary[@]}"
exit "$crashed"
