#!/usr/bin/env bash
# Builds Corral's guest kernel from Debian's linux-source package:
# `make tinyconfig`, then config.fragment merged on top, everything built in,
# producing vmlinux (ELF with a PVH note) and bzImage.
#
# Usage: guest-kernel/build.sh [--variant default|pvm-ci] [--jobs N]
#
# Prints the output directory (vmlinux, bzImage, config) as the last line of
# stdout; everything else goes to stderr. Outputs are cached outside the
# work tree, in $CORRAL_CACHE_DIR (default ~/.cache/corral), keyed by the
# hash of this script, the fragment, the variant's patches and the source
# package version, so an unchanged rebuild returns at once.
#
# Variants:
#   default  the kernel Corral users boot.
#   pvm-ci   default plus patches/pvm-ci/*.patch, source changes needed only to
#            survive the PVM development hosts' emulated ring 0, and
#            patches/pvm-ci/config.fragment, whose lines win over the main
#            fragment's. CI uses it for the Linux smoke test on those hosts;
#            never ship it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
variant=default
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=${2:?--variant needs a value}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift 2 ;;
    -h|--help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
case "$variant" in
  default|pvm-ci) ;;
  *) echo "build.sh: unknown variant '$variant' (default or pvm-ci)" >&2; exit 2 ;;
esac
log() { echo "guest-kernel: $*" >&2; }

# Debian packages: the source and what building it needs (installed under
# one machine-wide lock: tests build both variants at once).
bash "$here/../scripts/apt-install" linux-source bc bison flex libelf-dev libssl-dev xz-utils make gcc patch >&2
tarball=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n 1)
[ -n "$tarball" ] || { log "no /usr/src/linux-source-*.tar.xz after installing linux-source"; exit 1; }
srcpkg=$(basename "$tarball" .tar.xz)
srcver=$(dpkg-query -W -f '${Version}' "$srcpkg")

patches=()
if [ "$variant" != default ]; then
  mapfile -t patches < <(ls "$here/patches/$variant"/*.patch 2>/dev/null | sort)
fi
# The fragment in force: the main one, then the variant's, whose line for
# an option replaces the main one's.
fragment=$(mktemp)
trap 'rm -f "$fragment"' EXIT
awk 'function opt(l, a) {
       if (l ~ /^CONFIG_[A-Za-z0-9_]+=/) { sub(/=.*/, "", l); return l }
       if (l ~ /^# CONFIG_[A-Za-z0-9_]+ is not set/) { split(l, a, " "); return a[2] }
       return "" }
     { k = opt($0); if (k != "") { if (!(k in line)) order[n++] = k; line[k] = $0 } }
     END { for (i = 0; i < n; i++) print line[order[i]] }' \
  "$here/config.fragment" $( [ "$variant" != default ] && ls "$here/patches/$variant/config.fragment" 2>/dev/null ) > "$fragment"
key=$( { echo "$srcpkg $srcver $variant"; cat "$here/build.sh" "$here/config.fragment" "$fragment"
         [ "$variant" = default ] || cat "$here/patches/$variant/config.fragment" 2>/dev/null || true;
         for p in "${patches[@]}"; do cat "$p"; done; } | sha256sum | cut -c1-16)
cache=${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}/guest-kernel
out=$cache/$variant-$key
# One build per variant at a time (tests may ask concurrently).
mkdir -p "$cache"
exec 9>"$cache/.lock-$variant"
flock 9
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  log "cached: $variant kernel $key ($srcpkg $srcver)"
  echo "$out"
  exit 0
fi

# One pristine source tree per package version (the default variant's),
# one object tree per variant: a fragment change rebuilds incrementally. A
# variant with patches gets a hard-linked copy of the pristine tree (cp
# -al; patch replaces the files it changes rather than writing through the
# links), so the two trees take the disk of one (1.5 GB).
pristine=$cache/src-$srcver-default
obj=$cache/obj-$srcver-$variant
exec 8>"$cache/.lock-src"
flock 8
if [ ! -f "$pristine/.corral-ready" ]; then
  log "unpacking $tarball"
  rm -rf "$pristine" && mkdir -p "$pristine"
  tar -xf "$tarball" -C "$pristine" --strip-components=1
  touch "$pristine/.corral-ready"
fi
src=$pristine
if [ "$variant" != default ]; then
  src=$cache/src-$srcver-$variant
  # (A tree without the marker is a full copy from before, or half made.)
  if [ ! -f "$src/.corral-linked" ]; then
    log "linking a copy of the source for $variant"
    rm -rf "$src"
    cp -al "$pristine" "$src"
    rm -f "$src/.corral-ready"
    for p in "${patches[@]}"; do
      log "applying $(basename "$p")"
      patch -d "$src" -p1 --quiet < "$p"
    done
    touch "$src/.corral-linked"
  fi
fi
flock -u 8
exec 8>&-

mkdir -p "$obj"
log "configuring ($variant): tinyconfig + config.fragment"
make -s -C "$src" O="$obj" tinyconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment" >/dev/null
make -s -C "$src" O="$obj" olddefconfig >&2

# Every fragment line must have survived olddefconfig.
dropped=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qxF "$line" "$obj/.config" || dropped+=("$line (now: $(grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo unset))") ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      if grep -q "^$opt=" "$obj/.config"; then dropped+=("$line (now: $(grep "^$opt=" "$obj/.config"))"); fi ;;
  esac
done < "$fragment"
if [ ${#dropped[@]} -gt 0 ]; then
  log "olddefconfig dropped these fragment lines (missing dependencies?):"
  printf '  %s\n' "${dropped[@]}" >&2
  exit 1
fi

log "building vmlinux and bzImage with $jobs jobs (a clean build takes minutes)"
start=$(date +%s)
make -s -C "$src" O="$obj" -j"$jobs" vmlinux bzImage >&2
log "built in $(( $(date +%s) - start )) s"

tmp=$out.tmp.$$
rm -rf "$tmp" && mkdir -p "$tmp"
cp "$obj/vmlinux" "$tmp/vmlinux"
cp "$obj/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$obj/.config" "$tmp/config"
echo "$srcpkg $srcver $variant" > "$tmp/source"
rm -rf "$out" && mv "$tmp" "$out"
echo "$out"
