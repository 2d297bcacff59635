#!/usr/bin/env bash
# Builds the nested-KVM lane's L1 kit: Debian's packaged kernel (downloaded
# with `apt-get download`, never installed), the modules L1 needs with their
# dependencies resolved, and a busybox initramfs whose /init (init.sh here)
# loads them, mounts this machine's root read-only under a writable overlay
# and runs the test's command (see mod.rs beside this file).
#
# Usage: tests/support/nested/build-kit.sh
# Prints the kit directory (vmlinuz, initramfs.cpio.gz, kernel-version) as
# the last line of stdout; progress goes to stderr. Cached outside the work
# tree in $CORRAL_CACHE_DIR (default ~/.cache/corral)/nested, keyed by this
# script, init.sh, modules.py, the kernel package's name and version and
# busybox's version. Safe to run concurrently (one lock per cache).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
log() { echo "nested-kit: $*" >&2; }

bash "$repo/scripts/apt-install" busybox-static qemu-system-x86 python3 >&2

# The kernel package behind the linux-image-amd64 metapackage.
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
pkg=$(kpkg)
if [ -z "$pkg" ]; then
  exec 7>/var/lock/corral-apt.lock; flock 7
  apt-get -q -o DPkg::Lock::Timeout=600 update >&2
  flock -u 7; exec 7>&-
  pkg=$(kpkg)
fi
[ -n "$pkg" ] || { log "apt knows no linux-image-amd64 package: check /etc/apt/sources.list"; exit 1; }
pkgver=$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')
bbver=$(dpkg-query -W -f '${Version}' busybox-static)
key=$( { echo "$pkg $pkgver busybox $bbver"; cat "$here/build-kit.sh" "$here/init.sh" "$here/modules.py"; } \
       | sha256sum | cut -c1-16)
cache=${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}/nested
out=$cache/kit-$key
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$out/initramfs.cpio.gz" ]; then
  log "cached: $out ($pkg $pkgver)"
  echo "$out"
  exit 0
fi

tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "downloading $pkg $pkgver"
if ! (cd "$tmp" && apt-get -q download "$pkg=$pkgver" >&2 2>/dev/null); then
  exec 7>/var/lock/corral-apt.lock; flock 7
  apt-get -q -o DPkg::Lock::Timeout=600 update >&2
  flock -u 7; exec 7>&-
  (cd "$tmp" && apt-get -q download "$pkg=$pkgver" >&2)
fi
dpkg-deb -x "$tmp"/*.deb "$tmp/pkg"
kver=$(ls "$tmp/pkg/lib/modules")

# Modules: KVM (kvm-amd over QEMU's emulated SVM), virtio-pci and 9p for
# the host root, overlay for a writable root, virtio-blk for disks given to
# L1, tun for taps. Dependencies and load order come from each module's
# own `depends=`.
mkdir -p "$tmp/root/lib/modules" "$tmp/root/bin"
python3 "$here/modules.py" "$tmp/pkg/lib/modules/$kver/kernel" "$tmp/root/lib/modules" \
  kvm-amd virtio_pci 9pnet_virtio 9p overlay virtio_blk tun >&2
cp /bin/busybox "$tmp/root/bin/busybox"
cp "$here/init.sh" "$tmp/root/init"
chmod 0755 "$tmp/root/init"
(cd "$tmp/root" && { echo "dir /dev 0755 0 0"; echo "nod /dev/console 0600 0 0 c 5 1"; \
   find . -mindepth 1 | sed 's|^\./||' | sort | while read -r p; do
     if [ -d "$p" ]; then echo "dir /$p 0755 0 0"; else echo "file /$p $tmp/root/$p $(stat -c %a "$p") 0 0"; fi
   done; } > "$tmp/files.list")
python3 "$repo/rootfs/mkcpio.py" "$tmp/files.list" | gzip -1 > "$tmp/initramfs.cpio.gz"

mkdir -p "$tmp/kit"
cp "$tmp/pkg/boot/vmlinuz-$kver" "$tmp/kit/vmlinuz"
mv "$tmp/initramfs.cpio.gz" "$tmp/kit/"
echo "$kver ($pkg $pkgver)" > "$tmp/kit/kernel-version"
rm -rf "$out" && mv "$tmp/kit" "$out"
log "built $out: $(cat "$out/kernel-version"), modules: $(cat "$tmp/root/lib/modules/order" | tr '\n' ' ')"
echo "$out"
