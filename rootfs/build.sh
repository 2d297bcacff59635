#!/usr/bin/env bash
# Builds Corral's guest initramfs: Debian's busybox-static, our /init, the
# guest agent (guest-agent/) and the static guest tools of guest-tools/
# (see files.list for the contents), as a newc cpio archive.
#
# Usage: rootfs/build.sh [--gzip]
#
# Prints the archive's path as the last line of stdout. Uncompressed by
# default (decompressing in an emulated ring 0 is slow on the PVM hosts).
# Cached outside the work tree in $CORRAL_CACHE_DIR (default
# ~/.cache/corral), keyed by the inputs' hash.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
gzip=no
while [ $# -gt 0 ]; do
  case "$1" in
    --gzip) gzip=yes; shift ;;
    -h|--help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "rootfs/build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
repo=$(cd "$here/.." && pwd)
bash "$repo/scripts/apt-install" busybox-static python3 >&2
export BUSYBOX=/bin/busybox ROOTFS=$here
bbver=$(dpkg-query -W -f '${Version}' busybox-static)
key=$( { echo "busybox-static $bbver gzip=$gzip"; cat "$here/build.sh" "$here/mkcpio.py" "$here/files.list" "$here/init";
         cat "$repo/Cargo.lock" "$repo/Cargo.toml"
         for crate in guest-tools guest-agent shared-protocol; do
           cat "$repo/$crate/Cargo.toml"; find "$repo/$crate/src" "$repo/$crate/proto" "$repo/$crate/build.rs" -type f 2>/dev/null | sort | xargs cat
         done; } \
       | sha256sum | cut -c1-16)
cache=${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}/rootfs
name=initramfs.cpio; [ "$gzip" = yes ] && name=initramfs.cpio.gz
out=$cache/$key/$name
# One build at a time (tests may ask concurrently).
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$out" ]; then
  echo "rootfs: cached $out" >&2
  echo "$out"
  exit 0
fi
mkdir -p "$cache/$key"
# The guest tools, statically linked (crt-static applies to the target
# only, hence the explicit --target), in a target directory of their own
# so that a `cargo test` running this script never waits on its own lock.
echo "rootfs: building guest-tools and corral-agent (static)" >&2
# Built for size: every guest byte is unpacked at each boot (the agent
# powers the VM off on any panic, so panic=abort loses nothing).
env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET -u CARGO_ENCODED_RUSTFLAGS \
  RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=true \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
  cargo build --quiet --release --manifest-path "$repo/Cargo.toml" -p corral-guest-tools -p corral-agent \
  --target x86_64-unknown-linux-gnu --target-dir "$cache/target" >&2
export GUEST_TOOLS=$cache/target/x86_64-unknown-linux-gnu/release
tmp=$out.tmp.$$
python3 "$here/mkcpio.py" "$here/files.list" > "$tmp.cpio"
if [ "$gzip" = yes ]; then gzip -9n < "$tmp.cpio" > "$tmp"; rm "$tmp.cpio"; else mv "$tmp.cpio" "$tmp"; fi
mv "$tmp" "$out"
echo "rootfs: built $out ($(stat -c %s "$out") bytes)" >&2
echo "$out"
