#!/usr/bin/env bash
# Installs the Debian packages vessel's build, tests and demo need (root, apt-get).
# Runs `apt-get update` only when something is missing, so a prepared machine pays nothing.
set -euo pipefail

packages=(
    # guest kernel build (guest-kernel/build.sh)
    linux-source-6.1 build-essential bc flex bison libelf-dev xz-utils cpio
    # real components the tests and the demo drive
    containerd runc busybox-static qemu-system-x86
    # podman (with conmon) for the OCI runtime CLI test (tests/tests/oci_cli.rs) and the demo
    podman
    # CNI plugins (bridge, host-local, loopback) for the CRI tests and the bench's CRI measure
    containernetworking-plugins
    # protoc: the k8s-cri crate (CRI client of tests/src/cri.rs) compiles the CRI protos
    protobuf-compiler
    # tools the tests use: file(1) to check static linking, ip(8) for network tests,
    # script(1) from bsdutils for `ctr -t`, ps/pgrep from procps
    file iproute2 bsdutils procps util-linux
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all packages present" >&2
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages (${missing[*]}) and not root; run as root" >&2
    exit 1
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
