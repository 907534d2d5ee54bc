#!/usr/bin/env bash
# Builds a tiny test guest from Debian packages: a kernel and an initramfs (busybox + the virtio
# modules) whose init brings eth0 up and runs SCENARIO, a busybox sh script.
#
#   scripts/guest.sh OUTDIR SCENARIO      -> OUTDIR/vmlinuz, OUTDIR/initrd.gz
#
# Boot it with `-kernel OUTDIR/vmlinuz -initrd OUTDIR/initrd.gz -append "console=ttyS0 ... eg.K=V"`:
# init exports each `eg.K=V` of the kernel command line as EG_K for the scenario, and uses
# eg.ip (the guest's address, /24), eg.peer and eg.peermac (a static ARP entry). It prints
# "EG-UP" once eth0 is up, "EG-END" after the scenario, then powers off. Nothing binary is kept
# in the repository: the packages are downloaded with apt into the cache
# (EPOCHGATE_GUEST_CACHE, default ~/.cache/epochgate-guest) once and reused.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 OUTDIR SCENARIO" >&2
    exit 2
fi
out=$1
scenario=$2
[ -f "$scenario" ] || { echo "guest: scenario $scenario: no such file" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
cache=${EPOCHGATE_GUEST_CACHE:-$HOME/.cache/epochgate-guest}
mkdir -p "$cache" "$out"

# The kernel image package linux-image-amd64 points to (a metapackage), and busybox-static.
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
kpkg=$(kernel_package)
if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    kpkg=$(kernel_package)
fi
[ -n "$kpkg" ] || { echo "guest: apt knows no linux-image-amd64 (run apt-get update)" >&2; exit 1; }
# One build at a time per cache (tests may run concurrently with another worktree's).
exec 9>"$cache/.lock"
flock 9
for p in "$kpkg" busybox-static; do
    if ! ls "$cache/${p}_"*.deb >/dev/null 2>&1; then
        echo "guest: downloading $p into $cache" >&2
        (cd "$cache" && apt-get download -q "$p" >/dev/null 2>&1) ||
            { echo "guest: apt-get download $p failed" >&2; exit 1; }
    fi
done
unpacked="$cache/unpacked-$kpkg"
if [ ! -e "$unpacked/.done" ]; then
    rm -rf "$unpacked"
    mkdir -p "$unpacked"
    dpkg -x "$(ls "$cache/${kpkg}_"*.deb | head -n1)" "$unpacked/kernel"
    dpkg -x "$(ls "$cache/busybox-static_"*.deb | head -n1)" "$unpacked/busybox"
    touch "$unpacked/.done"
fi
flock -u 9

kver=${kpkg#linux-image-}
moddir="$unpacked/kernel/lib/modules/$kver"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$unpacked/busybox/bin/busybox" "$root/bin/busybox"

# virtio_net and what it needs, dependencies first (read from each module's .modinfo, since
# the unpacked package has no modules.dep).
declare -A seen=()
order=()
modfile() { find "$moddir" -name "$1.ko" -o -name "$(tr _ - <<<"$1").ko" | head -n1; }
add_module() {
    local name=$1 file dep
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    file=$(modfile "$name")
    [ -n "$file" ] || { echo "guest: module $name not in $kpkg" >&2; exit 1; }
    for dep in $(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    cp "$file" "$root/lib/modules/$name.ko"
    order+=("$name")
}
# virtio_pci is the transport QEMU's virtio-net-pci needs; it is not a dependency of virtio_net.
for m in virtio_pci virtio_net; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/modules.order"

cp "$here/guest/init" "$root/init"
cp "$scenario" "$root/scenario"
chmod 755 "$root/init" "$root/scenario"
(cd "$root" && find . | "$unpacked/busybox/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$out/initrd.gz.tmp"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
cp "$unpacked/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "guest: $out/vmlinuz $out/initrd.gz (modules: ${order[*]})" >&2
