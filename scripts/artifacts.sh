#!/usr/bin/env bash
# Builds everything a vessel VM needs and prints `NAME=path` lines (an env file) on stdout:
#   VESSEL_KERNEL   guest kernel (cached under /var/cache/vessel, see guest-kernel/build.sh)
#   VESSEL_AGENT    the statically linked agent (release)
#   VESSEL_INITRD   initramfs with the agent as /init (build/initrd.cpio)
#   VESSEL_BIN_DIR  where the host binaries are (target/<profile>)
# Usage: scripts/artifacts.sh [debug|release]     (default: debug, what the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
case "$profile" in
    debug) cargo_profile=() ; bin_dir=target/debug ;;
    release) cargo_profile=(--release) ; bin_dir=target/release ;;
    *) echo "artifacts: profile must be debug or release" >&2; exit 2 ;;
esac
log() { echo "artifacts: $*" >&2; }
t0=$(date +%s)

kernel=$(bash guest-kernel/build.sh | tail -n1)
log "kernel $kernel ($(( $(date +%s) - t0 )) s)"

t1=$(date +%s)
cargo build "${cargo_profile[@]}" --workspace --bins >&2
log "host binaries in $bin_dir ($(( $(date +%s) - t1 )) s)"

t2=$(date +%s)
agent=$(bash agent/build-static.sh | tail -n1)
mkdir -p build
"$bin_dir/vessel-mkinitrd" --agent "$agent" --out build/initrd.cpio >&2
log "agent $agent, initrd build/initrd.cpio ($(( $(date +%s) - t2 )) s)"

echo "VESSEL_KERNEL=$kernel"
echo "VESSEL_AGENT=$PWD/${agent#$PWD/}"
echo "VESSEL_INITRD=$PWD/build/initrd.cpio"
echo "VESSEL_BIN_DIR=$PWD/$bin_dir"
