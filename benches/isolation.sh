#!/usr/bin/env bash
# What the chroot isolation (issue 13: builds in a container with Docker's default settings) costs
# against the namespaces isolation, on the same builds, side by side under hyperfine, cold each run
# (an empty store, the base image pulled from the loopback registry):
#   copy-heavy: a 5,000-file context copied in, then one RUN over it (the chroot mode copies each
#               snapshot where overlayfs stacks it);
#   run-heavy:  ten RUN steps on a Debian base, each writing a few files (one snapshot copy, one diff
#               walk and one process set-up per step in the chroot mode).
# Each run starts after `sync` (the previous run's store is removed and written back first):
# the chroot mode writes a full copy of the root per step, and without it one run's writeback lands
# in the next run's time.
# Both modes run as root on this host (`--isolation userns` and `--isolation chroot`), so the
# difference is the isolation's alone. It prints each median, chroot/namespaces and the chroot runs'
# spread.
#
# How to run, as root (installs hyperfine when absent):
#   source the CI environment (FORGE_TEST_BUSYBOX, FORGE_TEST_DEBIAN on a 127.0.0.1 registry), then
#   benches/isolation.sh
# Settings: BENCH_RUNS (default 5), FORGE_BIN (default `cargo build --release -p forge`),
#   FORGE_BENCH_DIR (parent of the scratch dir, default /var/tmp), FORGE_BENCH_KEEP=1.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${BENCH_RUNS:-5}
BUSYBOX=${FORGE_TEST_BUSYBOX:-127.0.0.1:5000/forge-test/busybox:latest}
DEBIAN=${FORGE_TEST_DEBIAN:-127.0.0.1:5000/forge-test/debian:bookworm}
REGISTRY=${BUSYBOX%%/*}
# shellcheck source=benches/lib/common.sh
source "$ROOT/benches/lib/common.sh"

require_root_and_loopback isolation.sh "$REGISTRY"
missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v python3 >/dev/null || missing+=(python3)
install_quietly "${missing[@]}" || exit 1
forge=$(forge_binary isolation.sh) || exit 1

WORK=$(mktemp -d "${FORGE_BENCH_DIR:-/var/tmp}/forge-bench-isolation.XXXXXX")
mkdir -p "$WORK"/{copy,run,results}
cleanup() {
  set +e
  unmount_under "$WORK"
  if [ "${FORGE_BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# copy-heavy: 50 directories of 100 files of 1-4 KiB.
python3 - "$WORK/copy" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(50):
    p = os.path.join(root, "src", f"d{d:02}")
    os.makedirs(p)
    for f in range(100):
        with open(os.path.join(p, f"f{f:03}.txt"), "wb") as out:
            out.write(os.urandom(1024 * (1 + (d * 100 + f) % 4)))
PY
printf 'FROM %s\nCOPY src /src\nRUN find /src -type f | wc -l > /count\n' "$BUSYBOX" >"$WORK/copy/Dockerfile"

{
  printf 'FROM %s\n' "$DEBIAN"
  for i in $(seq 1 10); do
    printf 'RUN mkdir -p /work/%s && for f in a b c d e; do echo %s-$f > /work/%s/$f; done\n' "$i" "$i" "$i"
  done
} >"$WORK/run/Dockerfile"

echo "forge: $("$forge" version 2>/dev/null | head -1 || echo forge); $RUNS cold runs per case and mode"
for case in copy run; do
  echo "== $case-heavy"
  cmds=()
  for mode in userns chroot; do
    store=$WORK/store-$case-$mode
    cmds+=(--prepare "sh -c 'rm -rf $store && sync'" -n "$mode" "$forge build --root $store --isolation $mode --progress quiet $WORK/$case")
  done
  hyperfine -N --runs "$RUNS" --export-json "$WORK/results/$case.json" "${cmds[@]}"
done

python3 - "$WORK/results" <<'PY'
import json, sys, os
d = sys.argv[1]
print()
print(f"{'case':<12} {'namespaces':>11} {'chroot':>9} {'chroot/namespaces':>18} {'spread (chroot)':>16}")
for case in ("copy", "run"):
    r = {x["command"]: x for x in json.load(open(os.path.join(d, f"{case}.json")))["results"]}
    n, c = r["userns"]["median"], r["chroot"]["median"]
    spread = max(r["chroot"]["times"]) - min(r["chroot"]["times"])
    print(f"{case + '-heavy':<12} {n:>10.3f}s {c:>8.3f}s {c / n:>18.2f} {spread:>15.3f}s")
PY
