#!/usr/bin/env bash
# Diff + compress of one build step's change (64 MiB of random bytes + 20,000 small files) into a
# gzip layer: forge (walk-and-compare like the copy snapshotter, and from an overlay upper dir) side
# by side with `umoci repack` of the same change, timed by hyperfine.
# Usage: benches/diff.sh [RUNS]   (needs umoci, hyperfine; builds the example in release mode)
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/forge-bench-diff.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

for tool in umoci hyperfine; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed" >&2; exit 0; }
done
ROOTLESS=()
[ "$(id -u)" = 0 ] || ROOTLESS=(--rootless)

(cd "$ROOT" && cargo build --quiet --release -p forge-snapshotter --example diff_layer)
BIN=$TARGET/release/examples/diff_layer

# A base image of 2,000 files in 100 directories.
umoci init --layout "$WORK/layout" >/dev/null
umoci new --image "$WORK/layout:base" >/dev/null
umoci unpack "${ROOTLESS[@]}" --image "$WORK/layout:base" "$WORK/bundle" >/dev/null
for d in $(seq 1 100); do
  mkdir -p "$WORK/bundle/rootfs/usr/share/base$d"
  for f in $(seq 1 20); do
    head -c $((RANDOM % 4096 + 64)) /dev/urandom >"$WORK/bundle/rootfs/usr/share/base$d/f$f"
  done
done
umoci repack "${ROOTLESS[@]}" --image "$WORK/layout:base" "$WORK/bundle" >/dev/null
rm -rf "$WORK/bundle"
umoci unpack "${ROOTLESS[@]}" --image "$WORK/layout:base" "$WORK/bundle" >/dev/null
cp -a "$WORK/bundle/rootfs" "$WORK/lower"

# The change: written once into an empty dir (what an overlay upper dir holds), then copied onto
# the bundle's rootfs (what umoci and forge's walk-and-compare see).
CHANGE=$WORK/change
mkdir -p "$CHANGE/opt/app"
head -c $((64 * 1024 * 1024)) /dev/urandom >"$CHANGE/opt/app/blob.bin"
for d in $(seq 1 200); do
  mkdir -p "$CHANGE/opt/app/mod$d"
  for f in $(seq 1 100); do
    printf 'module %d file %d %s\n' "$d" "$f" "$RANDOM$RANDOM" >"$CHANGE/opt/app/mod$d/file$f.txt"
  done
done
cp -a "$CHANGE/." "$WORK/bundle/rootfs/"
mkdir "$WORK/bundle-meta"
find "$WORK/bundle" -maxdepth 1 -type f -exec cp -a {} "$WORK/bundle-meta/" \;
RESTORE="rm -f $WORK/bundle/*.mtree $WORK/bundle/umoci.json; cp -a $WORK/bundle-meta/. $WORK/bundle/; sync"

echo "change: $(du -sh "$CHANGE" | cut -f1), $(find "$CHANGE" -type f | wc -l) files; base: $(find "$WORK/lower" -type f | wc -l) files"
"$BIN" --overlay --upper "$CHANGE" --out "$WORK/forge-overlay.tgz"
"$BIN" --lower "$WORK/lower" --upper "$WORK/bundle/rootfs" --out "$WORK/forge-compare.tgz"

hyperfine --warmup 1 --runs "$RUNS" --export-markdown "$WORK/result.md" \
  --prepare "$RESTORE" \
  -n "umoci repack" "umoci repack ${ROOTLESS[*]} --image $WORK/layout:base $WORK/bundle" \
  -n "forge diff walk-and-compare, gzip" "$BIN --lower $WORK/lower --upper $WORK/bundle/rootfs --out $WORK/out.tgz" \
  -n "forge diff overlay upper, gzip" "$BIN --overlay --upper $CHANGE --out $WORK/out.tgz" \
  -n "forge diff overlay upper, zstd" "$BIN --overlay --upper $CHANGE --compression zstd --out $WORK/out.tzst"
cat "$WORK/result.md"
