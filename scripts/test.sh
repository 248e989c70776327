#!/usr/bin/env bash
# vessel's whole test suite on a fresh machine (the README's test command; .ci/run calls it):
# Debian packages, guest kernel (cached), all binaries, initramfs, then fmt, clippy and every
# test layer: unit, KVM tiny guests, agent on the host, shim under a real containerd, and
# the real-VM tests (our kernel + initramfs + agent). Needs root and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { echo; echo "=== $* ($(date +%T))"; }
started=$(date +%s)

if [ "$(id -u)" != 0 ]; then
    echo "test: vessel's tests need root (KVM, namespaces, mounts, containerd); run as root" >&2
    exit 1
fi
if [ ! -e /dev/kvm ]; then
    echo "test: /dev/kvm is missing; vessel needs KVM" >&2
    exit 1
fi

stage "packages"
bash scripts/deps.sh

stage "artifacts"
mkdir -p build
bash scripts/artifacts.sh debug > build/vessel.env
cat build/vessel.env
set -a
# shellcheck disable=SC1091
. build/vessel.env
set +a

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets' entry points (the `fuzzing` feature: what fuzz/ links; cargo-fuzz and
# its sanitizer build are scripts/fuzz.sh's, not CI's).
cargo clippy -p vessel-vmm -p vessel-agent --lib \
    --features vessel-vmm/fuzzing,vessel-agent/fuzzing -- -D warnings

stage "cargo test"
# One test binary at a time (cargo's default); inside a binary, tests share the 2 cores.
# Not under `set -e`: a failing test must still reach the summary below.
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee build/test.log
status=${PIPESTATUS[0]}
set -e

stage "summary"
grep -E "^test result:|^     Running|FAILED|panicked" build/test.log | grep -v "0 passed; 0 failed" || true
echo "total $(( $(date +%s) - started )) s"
exit "$status"
