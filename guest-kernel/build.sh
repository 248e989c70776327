#!/usr/bin/env bash
# Builds vessel's guest kernel (an ELF vmlinux) from Debian's linux-source-6.1 package:
# `make tinyconfig` + vessel.config + patches/*.patch, then `make vmlinux`.
#
# The result is cached outside the clone, keyed by a hash of everything that goes into it
# (config fragment, patches, this script, the source package version), and reused when present:
#   ${VESSEL_CACHE_DIR:-/var/cache/vessel}/kernel/<key>/vmlinux
# The last line printed on stdout is the path of vmlinux; everything else goes to stderr.
#
# Usage: guest-kernel/build.sh [--print-key]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${VESSEL_CACHE_DIR:-/var/cache/vessel}/kernel
log() { echo "guest-kernel: $*" >&2; }

need_pkgs=()
dpkg-query -W -f='${Status}' linux-source-6.1 2>/dev/null | grep -q "ok installed" || need_pkgs+=(linux-source-6.1)
for tool in bc flex bison gcc make xz; do
    command -v "$tool" >/dev/null || need_pkgs+=("$tool")
done
[ -e /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    # Package names for tools that differ from the command.
    pkgs=$(printf '%s\n' "${need_pkgs[@]}" | sed 's/^xz$/xz-utils/; s/^gcc$/build-essential/; s/^make$/build-essential/' | sort -u)
    log "installing: $pkgs"
    apt-get update -qq >&2
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >&2
fi

src_tar=$(ls /usr/src/linux-source-6.1.tar.* | head -n1)
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( {
    echo "linux-source-6.1 $src_version"
    cat "$here/vessel.config" "$here/build.sh"
    for p in "$here"/patches/*.patch; do echo "== $(basename "$p")"; cat "$p"; done
} | sha256sum | cut -c1-16)

if [ "${1:-}" = "--print-key" ]; then
    echo "$key"
    exit 0
fi

out_dir=$cache_root/$key
if [ -f "$out_dir/vmlinux" ]; then
    log "cached build $key"
    echo "$out_dir/vmlinux"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [ -f "$out_dir/vmlinux" ]; then # built by someone else while we waited
    echo "$out_dir/vmlinux"
    exit 0
fi

work=$cache_root/build-$key
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
log "building $key from $src_tar ($src_version) in $work"
tar -C "$work" -xf "$src_tar"
tree=$work/linux-source-6.1
for p in "$here"/patches/*.patch; do
    log "applying $(basename "$p")"
    patch -d "$tree" -p1 --quiet --forward < "$p" >&2
done

(
    cd "$tree"
    make -s tinyconfig >&2
    scripts/kconfig/merge_config.sh -m .config "$here/vessel.config" >/dev/null
    make -s olddefconfig >&2
)
# Every option of the fragment must have survived olddefconfig (a dependency can silently drop one).
missing=0
while IFS='=' read -r opt want; do
    have=$(grep -E "^$opt=" "$tree/.config" | cut -d= -f2 || true)
    [ -n "$have" ] || have=n
    if [ "$have" != "$want" ]; then
        log "config $opt: wanted $want, got $have"
        missing=1
    fi
done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$here/vessel.config")
[ "$missing" = 0 ] || { log "config fragment not applied; fix vessel.config"; exit 1; }

jobs=$(( $(nproc) + 1 ))
log "make -j$jobs vmlinux (about 7 minutes on 2 cores)"
if ! make -C "$tree" -j"$jobs" vmlinux > "$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    log "kernel build failed"
    exit 1
fi

staging=$cache_root/.staging-$key
rm -rf "$staging"
mkdir -p "$staging"
cp "$tree/vmlinux" "$tree/.config" "$tree/System.map" "$staging/"
echo $(( $(date +%s) - started )) > "$staging/build-seconds"
mv "$staging" "$out_dir"
log "built $key in $(cat "$out_dir/build-seconds") s"
echo "$out_dir/vmlinux"
