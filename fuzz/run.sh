#!/usr/bin/env bash
# Fuzzes every target (or the ones named) for SECONDS each with cargo-fuzz (libFuzzer) on the
# nightly toolchain. Usage: fuzz/run.sh SECONDS [TARGET...]
#
#   FUZZ_PARALLEL  targets fuzzed at once (default 2), one libFuzzer worker each
#
# New inputs go to fuzz/corpus-grown/<target>/ (not committed), logs to fuzz/logs/<target>.log,
# crashes to fuzz/artifacts/<target>/. The committed seeds in fuzz/corpus/<target>/ are read, never
# written. Ends with a table of executions, corpus size and crashes per target; exits 1 if any
# target crashed, and 2, saying what to install, when nightly or cargo-fuzz is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -eq 0 ]]; then
    echo "usage: fuzz/run.sh SECONDS [TARGET...]   (SECONDS per target, > 0)" >&2
    exit 64
fi
seconds="$1"
shift

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: NOT RUN: the nightly toolchain is missing (libFuzzer needs it):" >&2
    echo "  rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: NOT RUN: cargo-fuzz is missing:" >&2
    echo "  cargo install cargo-fuzz --locked" >&2
    exit 2
fi

all_targets=(bearer_token presign_query confirm_form upstream_answer jwks_document config_load request_head)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
    [[ -f "fuzz_targets/$target.rs" ]] || { echo "fuzz/run.sh: no target $target" >&2; exit 64; }
done

echo "building the fuzz targets (cargo +nightly fuzz build -O)..."
cargo +nightly fuzz build -O

mkdir -p logs
run_one() {
    local target="$1"
    mkdir -p "corpus-grown/$target" "artifacts/$target"
    local dict=()
    [[ -f "dict/$target.dict" ]] && dict=("-dict=$here/dict/$target.dict")
    # The grown corpus first: libFuzzer writes what it finds to the first directory only.
    # Absolute paths (cargo-fuzz sets an absolute -artifact_prefix): config_load changes the
    # working directory while an input runs.
    cargo +nightly fuzz run -O "$target" "$here/corpus-grown/$target" "$here/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        "${dict[@]}" >"logs/$target.log" 2>&1
}

parallel="${FUZZ_PARALLEL:-2}"
declare -A status
pids=()
names=()
for target in "${targets[@]}"; do
    while [[ ${#pids[@]} -ge $parallel ]]; do
        # Reap whichever run ends first.
        wait -n -p done_pid "${pids[@]}" && rc=0 || rc=$?
        for i in "${!pids[@]}"; do
            if [[ "${pids[$i]}" == "$done_pid" ]]; then
                status[${names[$i]}]=$rc
                unset 'pids[i]' 'names[i]'
            fi
        done
        pids=("${pids[@]}")
        names=("${names[@]}")
    done
    echo "fuzzing $target for ${seconds}s (log: fuzz/logs/$target.log)"
    run_one "$target" &
    pids+=($!)
    names+=("$target")
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" && rc=0 || rc=$?
    status[${names[$i]}]=$rc
done

failed=0
printf '\n%-16s %8s %12s %8s %8s %8s\n' target seconds executions exec/s corpus crashes
for target in "${targets[@]}"; do
    log="logs/$target.log"
    execs=- rate=- corpus=-
    if [[ -f "$log" ]]; then
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
        rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | awk '{print $2}' || true)
        # The corpus libFuzzer ended with (seeds and grown inputs, as it counts them).
        corpus=$(grep -o 'DONE .*corp: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
    fi
    crashes=$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    printf '%-16s %8s %12s %8s %8s %8s\n' "$target" "$seconds" "${execs:--}" "${rate:--}" "${corpus:--}" "$crashes"
    if [[ "${status[$target]}" != 0 || "$crashes" != 0 ]]; then
        failed=1
        echo "  $target FAILED (exit ${status[$target]}): see fuzz/$log and fuzz/artifacts/$target/" >&2
    fi
done
exit "$failed"
