#!/usr/bin/env bash
# The registry build cache across two CI runners: forge's `--cache-to/--cache-from type=registry`
# against docker's and buildah's registry caches, on the 10,000-file monorepo of
# benches/build-fixtures.sh, side by side in one run. Per tool:
#   runner 1  empty state: builds the monorepo, exports the cache to a private registry, pushes the
#             image (untimed);
#   runner 2  another empty state, same commit: builds importing that cache and pushes the image,
#             timed by hyperfine, its state emptied before every run (--prepare);
#   onefile   runner 2 again after rewriting one file that only `COPY . /src` reads (a new random
#             one each run; the cache stays runner 1's).
# It prints, per case, each tool's median wall time of runner 2 and the median per run of the blob
# bytes and blob requests (GET /v2/.../blobs/...) the registry served it, with forge/docker and
# forge/buildah. No target is set for these; a tool that fails is left out and said so, never an exit
# status.
#
# The tools' caches:
#   forge    --cache-to type=registry,ref=REG/forge/mono:cache,mode=max and --cache-from the same
#            (runner 2 only --cache-from); its own FORGE_ROOT per runner.
#   docker   dockerd's BuildKit (DOCKER_BUILDKIT=1; no buildx here, and a type=registry cache export
#            needs a buildx docker-container builder) with the inline cache: runner 1 builds with
#            --build-arg BUILDKIT_INLINE_CACHE=1 and pushes the image also as :cache, runner 2 builds
#            with --cache-from REG/docker/mono:cache. The inline cache holds the final stage's layers
#            (mode=min), which for this one-stage Dockerfile is every step. If BuildKit cannot build
#            here, the classic builder: runner 2 pulls :cache and builds with --cache-from it. The
#            output says which. Each runner gets a dockerd started on an empty data-root.
#   buildah  `bud --layers --cache-to/--cache-from REG/buildah/mono-cache` (a repository of one image
#            per cached step), its own --root/--runroot per runner.
#
# How the bytes are counted: a private Distribution registry (Debian's docker-registry) is started
# for the bench on a free 127.0.0.1 port, storage in the scratch dir, its access log on (one combined
# log line per request on its stdout). The busybox base ($FORGE_TEST_BUSYBOX) is copied into it first
# (buildah pull/push from a store of its own), and the fixture's FROM names that copy: every request of
# the scenario goes to the private registry. Before each timed run the --prepare notes where the access
# log ends; a run's requests are the lines from there to the next note.
#
# How to run (as root: it installs packages and starts its own registry and dockerd):
#   source the CI environment (FORGE_TEST_BUSYBOX, a registry on 127.0.0.1:5000), then
#   benches/cache.sh
# Settings: BENCH_RUNS (timed runs of runner 2 per tool and case, default 3), BENCH_TOOLS (default
#   "forge docker buildah"), FORGE_BIN (a forge binary; default `cargo build --release -p forge`),
#   FORGE_BENCH_DOCKER_BUILDER (buildkit or classic; default buildkit when it builds here),
#   FORGE_BENCH_DIR (parent of the scratch dir, default /var/tmp), FORGE_BENCH_KEEP=1 (keep it),
#   FORGE_BENCH_RESULTS=DIR (keep hyperfine's JSON, the per-run request counts and the table there).
# Every build uses `--network none`; nothing here reaches past loopback. forge runs as root.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${BENCH_RUNS:-3}
BASE=${FORGE_TEST_BUSYBOX:-127.0.0.1:5000/forge-test/busybox:latest}
read -r -a TOOLS <<<"${BENCH_TOOLS:-forge docker buildah}"
# shellcheck source=benches/lib/common.sh
source "$ROOT/benches/lib/common.sh"
STEP="bash $ROOT/benches/lib/cache-runner.sh"

require_root_and_loopback cache.sh "${BASE%%/*}"

has_tool() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }
missing=()
if has_tool docker; then { [ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ]; } || missing+=(docker.io); fi
command -v buildah >/dev/null || missing+=(buildah) # also copies the base into the private registry
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v python3 >/dev/null || missing+=(python3)
command -v curl >/dev/null || missing+=(curl)
install_quietly "${missing[@]}" || exit 1

FORGE=""
if has_tool forge; then FORGE=$(forge_binary cache.sh) || exit 1; fi

WORK=$(mktemp -d "${FORGE_BENCH_DIR:-/var/tmp}/forge-bench-cache.XXXXXX")
chmod 0755 "$WORK"
mkdir -p "$WORK"/{registry,logs,results,forge,buildah}
cleanup() {
  set +e
  [ -z "${BENCH_WORK:-}" ] || $STEP stop docker
  stop_private_registry
  unmount_under "$WORK"
  if [ "${FORGE_BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- the private registry ------------------------------------------------------------------------
start_private_registry "$WORK" cache.sh || exit 1

PRIV_BASE=$PRIV/base/busybox:latest
SEED="buildah --root $WORK/seed/root --runroot $WORK/seed/run --storage-driver overlay"
export REGISTRY_AUTH_FILE=$WORK/buildah/auth.json
echo '{"auths":{}}' >"$REGISTRY_AUTH_FILE"
{ $SEED pull -q --tls-verify=false "$BASE" && $SEED push -q --tls-verify=false "$BASE" "docker://$PRIV_BASE"; } \
  >"$WORK/logs/seed.log" 2>&1 || { echo "cache.sh: could not copy $BASE to $PRIV_BASE:" >&2; tail -n 20 "$WORK/logs/seed.log" >&2; exit 1; }
$SEED rmi -af >/dev/null 2>&1 || true
unmount_under "$WORK/seed"
rm -rf "$WORK/seed"

# --- fixture, settings for cache-runner.sh -------------------------------------------------------
bash "$ROOT/benches/build-fixtures.sh" "$WORK/fixtures" "$PRIV_BASE"
export BENCH_WORK=$WORK BENCH_REGISTRY=$PRIV BENCH_CONTEXT=$WORK/fixtures/monorepo
BENCH_CHANGED=$(cat "$WORK/fixtures/monorepo.changed")
BENCH_FORGE=$FORGE
BENCH_DOCKER_BUILDER=${FORGE_BENCH_DOCKER_BUILDER:-}
export BENCH_CHANGED BENCH_FORGE BENCH_DOCKER_BUILDER

# --- which tools can take part -------------------------------------------------------------------
declare -A WHY_OUT
if has_tool forge && ! "$FORGE" build --help 2>&1 | grep -q -- '--cache-to'; then
  WHY_OUT[forge]="this forge has no --cache-to/--cache-from"
fi
docker_mode=""
if has_tool docker; then
  if ! $STEP fresh docker 1 >"$WORK/logs/dockerd-start.log" 2>&1; then
    WHY_OUT[docker]="its dockerd did not start ($(tail -n 1 "$WORK/logs/dockerd-start.log"))"
  else
    mkdir -p "$WORK/fixtures/probe"
    printf 'FROM %s\nRUN true\n' "$PRIV_BASE" >"$WORK/fixtures/probe/Dockerfile"
    export DOCKER_HOST=unix://$WORK/dockerd/docker/docker.sock DOCKER_CONFIG=$WORK/dockerd/docker/config
    if [ -z "$BENCH_DOCKER_BUILDER" ]; then
      BENCH_DOCKER_BUILDER=buildkit
      DOCKER_BUILDKIT=1 $DOCKER build --network none -q "$WORK/fixtures/probe" >"$WORK/logs/probe.log" 2>&1 \
        || BENCH_DOCKER_BUILDER=classic
    fi
    if [ "$BENCH_DOCKER_BUILDER" = buildkit ]; then
      docker_mode="BuildKit (DOCKER_BUILDKIT=1, no buildx), inline cache: BUILDKIT_INLINE_CACHE=1 image as --cache-from"
    else
      docker_mode="classic builder, --cache-from a pulled image"
      [ ! -s "$WORK/logs/probe.log" ] || docker_mode+=" (BuildKit refused: $(tail -n 1 "$WORK/logs/probe.log"))"
    fi
  fi
fi

echo "forge:    $([ -n "$FORGE" ] && { $FORGE --version 2>/dev/null || echo "$FORGE"; } || echo -), as root, $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
has_tool docker && echo "docker:   $($DOCKER version --format '{{.Server.Version}}' 2>/dev/null || echo ?), $docker_mode"
has_tool buildah && echo "buildah:  $(buildah --version | cut -d' ' -f3), root, bud --layers --cache-to/--cache-from"
echo "registry: $(docker-registry --version | cut -d' ' -f3) on $PRIV (private, access log on); base $BASE copied to $PRIV_BASE"
echo "runs:     $RUNS timed runs of runner 2 per tool and case; machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- runner 1, and one untimed runner 2 as a check -----------------------------------------------
mark() { echo "$1 $2 $(stat -c %s "$WORK/logs/registry-access.log")" >>"$WORK/results/offsets"; }
OK=()
for tool in "${TOOLS[@]}"; do
  if [ -n "${WHY_OUT[$tool]:-}" ]; then
    echo "!! $tool left out: ${WHY_OUT[$tool]}"
    continue
  fi
  log=$WORK/logs/$tool-runner1.log
  mark runner1 "$tool"
  if ! { $STEP fresh "$tool" 1 && $STEP build "$tool" 1; } >"$log" 2>&1; then
    echo "!! $tool left out: runner 1 failed. Last lines of $log:"
    tail -n 12 "$log" | sed 's/^/   | /'
    continue
  fi
  log=$WORK/logs/$tool-runner2.log
  if ! { $STEP prepare "$tool" check && $STEP build "$tool" 2; } >"$log" 2>&1; then
    echo "!! $tool left out: runner 2 failed. Last lines of $log:"
    tail -n 12 "$log" | sed 's/^/   | /'
    continue
  fi
  OK+=("$tool")
done
mark end -

# --- runner 2, timed -----------------------------------------------------------------------------
run_case() {
  local case=$1 tool args=()
  echo
  echo "== runner 2, $case"
  for tool in "${OK[@]}"; do
    args+=(--prepare "$STEP prepare $tool $case" -n "$tool" "$STEP build $tool 2")
  done
  if [ ${#args[@]} -gt 0 ]; then
    hyperfine -N --style basic --runs "$RUNS" --export-json "$WORK/results/$case.json" "${args[@]}" \
      || echo "!! hyperfine failed on '$case' (a build failed during the timed runs); figures left out"
  fi
  sleep 0.5 # the registry logs a request once its response is sent
  mark end -
}
run_case same
run_case onefile

# --- summary -------------------------------------------------------------------------------------
echo
python3 - "$WORK/results" "$WORK/logs/registry-access.log" "${OK[*]}" <<'PY' | tee "$WORK/results/summary.md"
import json, os, re, statistics, sys
results, access_log, ok = sys.argv[1], sys.argv[2], sys.argv[3].split()
log = open(access_log, "rb").read()
line_re = re.compile(rb'"(\S+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)')
# Each note starts a range that ends at the next one.
notes = [l.split() for l in open(os.path.join(results, "offsets"))]
runs = {}
for (case, tool, start), nxt in zip(notes, notes[1:]):
    if case not in ("same", "onefile"):
        continue
    blob_bytes = blob_gets = requests = 0
    for line in log[int(start):int(nxt[2])].splitlines():
        m = line_re.search(line)
        if not m:
            continue
        requests += 1
        method, path, size = m.group(1), m.group(2), m.group(4)
        if method == b"GET" and re.match(rb"/v2/.+/blobs/sha256:", path):
            blob_gets += 1
            blob_bytes += 0 if size == b"-" else int(size)
    runs.setdefault((case, tool), []).append((blob_bytes, blob_gets, requests))
json.dump({f"{c} {t}": v for (c, t), v in runs.items()}, open(os.path.join(results, "requests.json"), "w"))

def ratio(a, b):
    return "n/a" if a is None or not b else f"{a / b:.2f}x"
def num(v, f):
    return "n/a" if v is None else f(v)
print("| case | tool | runner 2 wall s (median) | blob bytes fetched | blob GETs | all requests |")
print("|---|---|---:|---:|---:|---:|")
for case, label in (("same", "same commit"), ("onefile", "one file changed")):
    times = {}
    path = os.path.join(results, case + ".json")
    if os.path.exists(path):
        times = {r["command"]: r["median"] for r in json.load(open(path))["results"]}
    row = {}
    for tool in ("forge", "docker", "buildah"):
        per_run = runs.get((case, tool)) if tool in times else None
        med = [statistics.median(x[i] for x in per_run) for i in range(3)] if per_run else [None] * 3
        row[tool] = [times.get(tool)] + med
        if tool in ok:
            print(f"| {label} | {tool} | {num(row[tool][0], lambda v: f'{v:.3f}')} "
                  f"| {num(med[0], lambda v: f'{v:,.0f}')} | {num(med[1], lambda v: f'{v:.0f}')} "
                  f"| {num(med[2], lambda v: f'{v:.0f}')} |")
    for other in ("docker", "buildah"):
        if "forge" in ok and other in ok:
            f, o = row["forge"], row[other]
            print(f"| {label} | forge/{other} | " + " | ".join(ratio(f[i], o[i]) for i in range(4)) + " |")
print("(medians over the timed runs; bytes and requests are per run, from the private registry's access log;")
print(" n/a: a tool failed or was left out, see above)")
PY
if [ -n "${FORGE_BENCH_RESULTS:-}" ]; then
  mkdir -p "$FORGE_BENCH_RESULTS"
  cp "$WORK"/results/* "$FORGE_BENCH_RESULTS/"
  echo "hyperfine JSON, per-run request counts and the summary copied to $FORGE_BENCH_RESULTS"
fi
