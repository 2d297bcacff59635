#!/usr/bin/env bash
# Builds Corral's guest initramfs: Debian's busybox-static plus our /init
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
if ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q "ok installed"; then
  echo "rootfs: installing busybox-static" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends busybox-static >&2
fi
export BUSYBOX=/bin/busybox ROOTFS=$here
bbver=$(dpkg-query -W -f '${Version}' busybox-static)
key=$( { echo "busybox-static $bbver gzip=$gzip"; cat "$here/build.sh" "$here/mkcpio.py" "$here/files.list" "$here/init"; } \
       | sha256sum | cut -c1-16)
cache=${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}/rootfs
name=initramfs.cpio; [ "$gzip" = yes ] && name=initramfs.cpio.gz
out=$cache/$key/$name
if [ -f "$out" ]; then
  echo "rootfs: cached $out" >&2
  echo "$out"
  exit 0
fi
mkdir -p "$cache/$key"
tmp=$out.tmp.$$
python3 "$here/mkcpio.py" "$here/files.list" > "$tmp.cpio"
if [ "$gzip" = yes ]; then gzip -9n < "$tmp.cpio" > "$tmp"; rm "$tmp.cpio"; else mv "$tmp.cpio" "$tmp"; fi
mv "$tmp" "$out"
echo "rootfs: built $out ($(stat -c %s "$out") bytes)" >&2
echo "$out"
