#!/usr/bin/env bash
# Runs a container inside a vessel VM on a fresh Debian 12 machine (the README's first
# command). Installs packages, builds the guest kernel (cached), the binaries and the
# initramfs, installs them, starts a containerd of its own with its socket at
# /run/vessel-demo/containerd.sock, imports a busybox image built locally, and runs:
#   ctr run --rm --runtime io.containerd.vessel.v2 <busybox> <id> sh -c 'echo ...'
# The containerd keeps running afterwards for your own `ctr` commands (printed at the end).
# Then the same under podman: podman --runtime /usr/local/bin/vessel-runc run --rm ...
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (KVM, mounts, containerd)" >&2; exit 1; }
[ -e /dev/kvm ] || { echo "demo: /dev/kvm is missing; vessel needs KVM" >&2; exit 1; }

demo=/run/vessel-demo
sock=$demo/containerd.sock
image=docker.io/library/vessel-busybox:latest
ctr() { command ctr --address "$sock" --namespace default "$@"; }

bash scripts/deps.sh
mkdir -p build
bash scripts/artifacts.sh release > build/vessel-release.env
set -a
# shellcheck disable=SC1091
. build/vessel-release.env
set +a

echo "demo: installing to /usr/local (bin: vessel-vmm, containerd-shim-vessel-v2, vessel, vessel-runc; share/vessel: vmlinux, initrd.cpio)" >&2
install -m 0755 "$VESSEL_BIN_DIR/vessel-vmm" "$VESSEL_BIN_DIR/containerd-shim-vessel-v2" \
    "$VESSEL_BIN_DIR/vessel" "$VESSEL_BIN_DIR/vessel-runc" /usr/local/bin/
install -d /usr/local/share/vessel
install -m 0644 "$VESSEL_KERNEL" /usr/local/share/vessel/vmlinux
install -m 0644 "$VESSEL_INITRD" /usr/local/share/vessel/initrd.cpio
vessel check || echo "demo: 'vessel check' reports problems (above); trying anyway" >&2

if ! { [ -S "$sock" ] && ctr version >/dev/null 2>&1; }; then
    mkdir -p "$demo" /var/lib/vessel-demo
    cat > "$demo/containerd.toml" <<TOML
version = 2
root = "/var/lib/vessel-demo/containerd"
state = "$demo/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vessel]
  runtime_type = "io.containerd.vessel.v2"
TOML
    echo "demo: starting containerd (log: $demo/containerd.log)" >&2
    PATH=/usr/local/bin:$PATH setsid containerd --config "$demo/containerd.toml" \
        > "$demo/containerd.log" 2>&1 < /dev/null &
    echo $! > "$demo/containerd.pid"
    for _ in $(seq 100); do
        [ -S "$sock" ] && ctr version >/dev/null 2>&1 && break
        sleep 0.1
    done
    ctr version >/dev/null || { tail -n 20 "$demo/containerd.log" >&2; exit 1; }
fi

# The image's OCI archive (built once; containerd and podman import the same file).
tar=build/busybox-image/busybox-oci.tar
if [ ! -f "$tar" ]; then
    rm -rf build/busybox-image
    tar=$("$VESSEL_BIN_DIR/vessel-busybox-image" build/busybox-image | tail -n1)
fi
if ! ctr images ls -q | grep -qx "$image"; then
    ctr images import "$tar" >&2
fi

id=vessel-demo-$$
echo "demo: ctr run --rm --runtime io.containerd.vessel.v2 $image $id ..." >&2
echo "demo: (on KVM-PVM hosts a cold VM boot takes about a minute)" >&2
start=$(date +%s.%N)
ctr run --rm --runtime io.containerd.vessel.v2 "$image" "$id" \
    sh -c 'echo "hello from a vessel VM: kernel $(uname -r), hostname $(hostname)"'
echo "demo: done in $(echo "$(date +%s.%N) - $start" | bc | cut -c1-6) s" >&2

# The same VM runtime under podman, through the OCI runtime CLI (oci-cli/README.md).
if command -v podman >/dev/null; then
    podman image exists "$image" || podman load -i "$tar" >&2
    echo "demo: podman --runtime /usr/local/bin/vessel-runc run --rm $image ..." >&2
    start=$(date +%s.%N)
    podman --runtime /usr/local/bin/vessel-runc run --rm "$image" \
        sh -c 'echo "hello from podman in a vessel VM: kernel $(uname -r)"'
    echo "demo: podman done in $(echo "$(date +%s.%N) - $start" | bc | cut -c1-6) s" >&2
fi
cat >&2 <<HINT

containerd is still running for you:
  ctr --address $sock run --rm --runtime io.containerd.vessel.v2 $image t1 uname -a
  ctr --address $sock run --rm --runtime io.containerd.runc.v2 $image t2 uname -a   # compare: runc
stop it with: kill \$(cat $demo/containerd.pid)
podman with vessel:
  podman --runtime /usr/local/bin/vessel-runc run --rm $image uname -a
HINT
