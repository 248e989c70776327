#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for SECONDS each (default 60), one fuzzer process at a
# time, each from its committed corpus (fuzz/corpus/<target>/, never written: what a run finds
# goes to fuzz/target/corpus/<target>/), and prints executions, exec/s and coverage per target.
# Not part of CI: CI replays the committed corpus in `cargo test` (fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]        e.g. scripts/fuzz.sh 300 vsock virtio_fs
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and root (virtio_fs serves as the
# guest's uids). cargo-fuzz passes nightly-only flags (-Zsanitizer=address ...);
# RUSTC_BOOTSTRAP=1 makes the stable toolchain accept them. A crash leaves its input in
# fuzz/artifacts/<target>/ and the script goes on with the next target, exiting 1 at the end.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
[ $# -gt 0 ] && shift
all=(virtio_mmio vsock virtio_net virtio_fs snapshot_manifest seccomp_compile)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1

echo "=== building ${#targets[@]} target(s) (ASan, debug assertions, optimized)"
# 16 codegen units: a much shorter build on 2 cores for a few percent of speed.
for t in "${targets[@]}"; do
    cargo fuzz build --codegen-units 16 "$t"
done

mkdir -p target/logs
status=0
summary=()
for t in "${targets[@]}"; do
    work=target/corpus/$t
    mkdir -p "$work" "artifacts/$t"
    opts=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "dict/$t.dict" ] && opts+=(-dict="dict/$t.dict")
    case $t in
        # Long enough for a profile with hundreds of conditions.
        seccomp_compile) opts+=(-max_len=16384) ;;
        snapshot_manifest) opts+=(-max_len=32768) ;;
        *) opts+=(-max_len=4096) ;;
    esac
    log=target/logs/$t.log
    echo "=== $t: ${secs}s (log: fuzz/$log)"
    set +e
    cargo fuzz run --codegen-units 16 "$t" "$work" "corpus/$t" -- "${opts[@]}" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -E 'stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
    rate=$(grep -E 'stat::average_exec_per_sec:' "$log" | tail -1 | awk '{print $2}')
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1)
    if [ $rc -ne 0 ]; then
        status=1
        verdict="CRASH (rc $rc): $(ls -t "artifacts/$t" 2>/dev/null | head -1)"
        grep -m3 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" || true
    else
        verdict=ok
    fi
    summary+=("$(printf '%-18s %12s execs %8s/s  %-40s %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$verdict")")
done

echo
echo "=== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit $status
