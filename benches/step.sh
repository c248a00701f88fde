#!/usr/bin/env bash
# Per-step overhead of running `true` in a fresh container, 50 times, side by side:
#   - forge's embedded backend, in-process (the per-step cost inside a build: one forge process, N steps)
#   - forge-runner-step as a whole process (adds process start, tokio and, rootless, the user namespace)
#   - `runc run` on an OCI bundle of the same busybox rootfs (root, and `runc spec --rootless` as the user)
#   - `buildah run` when buildah is installed (Debian 12: apt-get install buildah)
# containerd is measured by the containerd backend's own bench (branch runner-containerd).
#
# Usage (as root): benches/step.sh [RUNS]. FORGE_TEST_USER (default forge-ci, with a subuid range: see
# .ci/setup.d/40-rootless-user.sh) is used for the rootless rows. Needs hyperfine, runc, /bin/busybox.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
USER_NAME=${FORGE_TEST_USER:-forge-ci}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

[ "$(id -u)" = 0 ] || { echo "run as root (the rootless rows switch to $USER_NAME)"; exit 2; }
for tool in hyperfine runc jq setpriv; do
  command -v "$tool" >/dev/null || { echo "missing $tool"; exit 2; }
done

cargo build --release -q -p forge-runner --bin forge-runner-step
WORK=$(mktemp -d /tmp/forge-step-bench.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  if [ -n "${BUILDAH_CTR:-}" ]; then buildah "${BUILDAH_OPTS[@]}" rm "$BUILDAH_CTR" >/dev/null 2>&1 || true; fi
  if [ -d "$WORK/buildah-root" ]; then buildah "${BUILDAH_OPTS[@]}" rm --all >/dev/null 2>&1 || true; fi
  rm -rf "$WORK" 2>/dev/null || true
}
trap cleanup EXIT
BIN=$WORK/forge-runner-step
install -m 0755 "$CARGO_TARGET_DIR/release/forge-runner-step" "$BIN"

# A busybox rootfs: the overlay's lower dir for forge, the bundle rootfs for runc.
make_rootfs() {
  local root=$1
  mkdir -p "$root"/{bin,etc,root,tmp,proc,dev,sys}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000::/home/tester:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\ntester:x:1000:\n' >"$root/etc/group"
}

setup_side() { # $1 = root|rootless
  local d=$WORK/$1
  mkdir -p "$d"/{upper,work,state,cache}
  make_rootfs "$d/lower"
  # runc needs the rootfs inside the bundle; a copy keeps forge's lower dir untouched.
  mkdir -p "$d/bundle"
  cp -a "$d/lower" "$d/bundle/rootfs"
  if [ "$1" = rootless ]; then
    chown -R "$USER_NAME:$USER_NAME" "$d"
    (cd "$d/bundle" && setpriv --reuid "$USER_NAME" --regid "$USER_NAME" --init-groups -- runc spec --rootless)
  else
    (cd "$d/bundle" && runc spec)
  fi
  local filter='.process.args = ["/bin/true"] | .process.terminal = false'
  # Under SCHED_FIFO (the second pass) a cgroup v1 cpu group needs a real-time budget to admit the task.
  [ "$1" = root ] && filter="$filter | .linux.resources.cpu = {realtimeRuntime: 100000, realtimePeriod: 1000000}"
  jq "$filter" "$d/bundle/config.json" >"$d/bundle/c.json"
  mv "$d/bundle/c.json" "$d/bundle/config.json"
  [ "$1" = rootless ] && chown "$USER_NAME:$USER_NAME" "$d/bundle/config.json"
  mkdir -p "$d/runc-state"
  [ "$1" = rootless ] && chown "$USER_NAME:$USER_NAME" "$d/runc-state"
  return 0
}
setup_side root
setup_side rootless

as_user=(setpriv --reuid "$USER_NAME" --regid "$USER_NAME" --init-groups --)
step_cmd() { # $1 = root|rootless, rest = extra flags
  local d=$WORK/$1; shift
  echo "$BIN --quiet --state-dir $d/state --cache-root $d/cache --overlay $d/lower:$d/upper:$d/work $* -- /bin/true"
}

# On a shared, loaded machine wall-clock figures mostly measure the scheduler; the second pass runs
# everything under SCHED_FIFO (chrt -f 50) to show each tool's own cost. FORGE_BENCH_RT=0 skips it.
passes=("")
if [ "${FORGE_BENCH_RT:-1}" != 0 ] && command -v chrt >/dev/null; then passes+=("chrt -f 50"); fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"

if command -v buildah >/dev/null; then
  BUILDAH_OPTS=(--root "$WORK/buildah-root" --runroot "$WORK/buildah-runroot" --storage-driver vfs)
  BUILDAH_CTR=$(buildah "${BUILDAH_OPTS[@]}" from scratch)
  mnt=$(buildah "${BUILDAH_OPTS[@]}" mount "$BUILDAH_CTR")
  cp -a "$WORK/root/lower/." "$mnt/"
else
  echo "(buildah is not installed: no buildah row; apt-get install buildah to add it)"
fi

for rt in "${passes[@]}"; do
  echo
  echo "######## pass: ${rt:-normal scheduling}"
  echo "== in-process: one forge process running $RUNS steps of /bin/true (the per-step cost in a build)"
  for side in root rootless; do
    prefix="$rt"
    [ "$side" = rootless ] && prefix="$rt ${as_user[*]}"
    # shellcheck disable=SC2046,SC2086
    $prefix $(step_cmd $side --repeat "$RUNS") 2>&1 \
      | sed -n 's/.*duration_ms=\([0-9.]*\).*/\1/p' \
      | sort -n \
      | awk -v side="$side" '{ v[NR]=$1; s+=$1 } END {
          printf "embedded %-8s per step: mean %.2f ms, median %.2f ms, min %.2f ms, max %.2f ms (n=%d)\n",
            side, s/NR, v[int((NR+1)/2)], v[1], v[NR], NR }'
  done

  echo
  echo "== whole commands, hyperfine --runs $RUNS"
  cmds=(
    -n "embedded root (process)" "$(step_cmd root)"
    -n "embedded rootless (process, incl. userns)" "${as_user[*]} $(step_cmd rootless)"
    -n "runc run root" "runc --root $WORK/root/runc-state run --bundle $WORK/root/bundle bench-root"
    -n "runc run rootless" "${as_user[*]} runc --root $WORK/rootless/runc-state run --bundle $WORK/rootless/bundle bench-rootless"
  )
  # buildah's own runc config has no real-time budget, so it cannot run under SCHED_FIFO here.
  if [ -n "${BUILDAH_CTR:-}" ] && [ -z "$rt" ]; then
    cmds+=(-n "buildah run root" "buildah ${BUILDAH_OPTS[*]} run --network host $BUILDAH_CTR /bin/true")
  fi
  # shellcheck disable=SC2086
  $rt hyperfine -N --warmup 3 --runs "$RUNS" --style basic --export-markdown "$WORK/results.md" "${cmds[@]}" >/dev/null
  cat "$WORK/results.md"
done
