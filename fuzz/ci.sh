#!/usr/bin/env bash
# Bounded, reproducible fuzzing for CI: builds every cargo-fuzz target with
# the instrumentation cargo-fuzz adds (`-s none`: no sanitizer, so the stable
# toolchain builds it without cargo-fuzz installed) and runs each for a fixed
# number of inputs from a fixed seed, starting from the committed seeds. The
# same binary and seed give the same run, so CI does not pass or fail by luck;
# a crash (panic) fails the run and libFuzzer writes the input to
# fuzz/artifacts/<target>/ for `cargo fuzz run <target> <file>`.
#
#   bash fuzz/ci.sh                  # every target, CAIRN_FUZZ_RUNS each
#                                    # (store targets: CAIRN_FUZZ_STORE_RUNS)
#   CAIRN_FUZZ_RUNS=2000000 bash fuzz/ci.sh remote_write
set -euo pipefail
cd "$(dirname "$0")"
runs_default="${CAIRN_FUZZ_RUNS:-200000}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# an explicit --target keeps RUSTFLAGS off build scripts (as cargo-fuzz does)
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --bins --target-dir target/ci --target "$host"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
for t in "${targets[@]}"; do
    corpus="$(mktemp -d)"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    mkdir -p "artifacts/$t"
    runs="$runs_default"
    # the store targets write a data directory per input: far slower
    case "$t" in block_open | wal_replay) runs="${CAIRN_FUZZ_STORE_RUNS:-1500}" ;; esac
    start=$(date +%s)
    "target/ci/$host/release/$t" -seed=1 -runs="$runs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=0 "$corpus" "${seeds[@]}" 2>"$corpus.log" || {
        tail -60 "$corpus.log"
        echo "fuzz: $t FAILED (input saved under fuzz/artifacts/$t/)"
        exit 1
    }
    echo "fuzz: $t: $runs inputs, no crash ($(( $(date +%s) - start )) s)"
    rm -rf "$corpus" "$corpus.log"
done
