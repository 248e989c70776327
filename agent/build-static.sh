#!/bin/sh
# Builds the agent as a static glibc binary (the guest has no libc) and prints its path.
set -eu
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --release -p vessel-agent --target x86_64-unknown-linux-gnu >&2
bin="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/vessel-agent"
if ! file "$bin" | grep -Eq "statically linked|static-pie linked"; then
    echo "error: $bin is not statically linked" >&2
    exit 1
fi
echo "$bin"
