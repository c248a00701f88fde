#!/usr/bin/env bash
# `forge run` against the docker script a CI job would otherwise run, side by side under hyperfine,
# on one pipeline: build an app image (a 2,000-file source tree, one RUN over it), run a lint and a
# unit job in parallel on it, an integration job beside a real redis server (a service, made from
# the machine's redis-server package), then push the image to the loopback registry.
#   docker: docker build; the two jobs as parallel `docker run`s; the service as a detached
#           container and the job in its network namespace (`--network container:ID`: this dockerd
#           runs with --bridge=none, and a shared namespace is also what forge gives a job and its
#           services); readiness by `redis-cli ping` until it answers; docker push.
#   forge:  forge run on the equivalent forge.yaml.
# Cases: cold (no cache, no image: each run from scratch) and unchanged (the same pipeline again).
# It prints each tool's median, forge/docker, and the unchanged forge run beside the floor an
# unchanged rerun cannot beat: stat-ing the contexts' files (find -printf). A missed expectation is
# reported, never an exit status.
#
# How to run, as root (it installs docker.io, hyperfine and redis-server when absent, without starting
# their services, and starts a private dockerd):
#   source the CI environment (FORGE_TEST_BUSYBOX, a registry on 127.0.0.1:5000), then
#   benches/pipeline.sh
# Settings: BENCH_RUNS (timed runs per tool and case, default 5), BENCH_WARMUP (default 1),
#   FORGE_BIN (default `cargo build --release -p forge`), FORGE_BENCH_USER (run forge rootless as this
#   user), FORGE_BENCH_DIR (parent of the scratch dir, default /var/tmp), FORGE_BENCH_KEEP=1.
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${BENCH_RUNS:-5}
WARMUP=${BENCH_WARMUP:-1}
BASE=${FORGE_TEST_BUSYBOX:-127.0.0.1:5000/forge-test/busybox:latest}
REGISTRY=${BASE%%/*}
BENCH_USER=${FORGE_BENCH_USER:-}
# shellcheck source=benches/lib/common.sh
source "$ROOT/benches/lib/common.sh"

require_root_and_loopback pipeline.sh "$REGISTRY"
missing=()
{ [ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ]; } || missing+=(docker.io)
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v python3 >/dev/null || missing+=(python3)
install_quietly "${missing[@]}" || exit 1

forge_src=$(forge_binary pipeline.sh) || exit 1

WORK=$(mktemp -d "${FORGE_BENCH_DIR:-/var/tmp}/forge-bench-pipeline.XXXXXX")
chmod 0755 "$WORK"
mkdir -p "$WORK"/{bin,logs,results,forge,repo}
cleanup() {
  set +e
  $DOCKER ps -aq --filter label=forge-bench | xargs -r $DOCKER rm -f >/dev/null 2>&1
  stop_dockerd
  unmount_under "$WORK"
  if [ "${FORGE_BENCH_KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- the pipeline's repository -------------------------------------------------------------------
REPO=$WORK/repo
TAG_FORGE=$REGISTRY/forge-bench-pipeline/forge-app:latest
TAG_DOCKER=$REGISTRY/forge-bench-pipeline/docker-app:latest
mkdir -p "$REPO/app/src" "$REPO/redis/rootfs"
for d in $(seq 1 40); do
  mkdir -p "$REPO/app/src/m$d"
  for f in $(seq 1 50); do echo "module $d file $f" >"$REPO/app/src/m$d/f$f.txt"; done
done
cat >"$REPO/app/Dockerfile" <<DF
FROM $BASE
WORKDIR /app
COPY src/ src/
RUN find src -type f | sort | xargs cat | md5sum > build.sum && mkdir -p bin && printf '#!/bin/sh\\necho app ok\\n' > bin/app && chmod 755 bin/app
DF
for bin in /usr/bin/redis-server /usr/bin/redis-cli; do
  for f in "$bin" $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$REPO/redis/rootfs$(dirname "$f")"
    cp -L "$f" "$REPO/redis/rootfs$f"
  done
done
printf 'FROM %s\nCOPY rootfs/ /\nCMD ["/usr/bin/redis-server", "--save", "", "--appendonly", "no"]\n' "$BASE" \
  >"$REPO/redis/Dockerfile"

LINT='test -s build.sum && ./bin/app true'
UNIT='for m in src/m*; do test -n "$(ls "$m")"; done; echo units ok'
INTEG='redis-cli set hits 1 && redis-cli incr hits && test "$(redis-cli get hits)" = 2'
cat >"$REPO/forge.yaml" <<YAML
images:
  app:
    context: app
    tags: ["$TAG_FORGE"]
    push: true
    needs: [lint, unit, integration]
  redis:
    context: redis
jobs:
  lint:
    image: app
    script: ['$LINT']
  unit:
    image: app
    script: ['$UNIT']
  integration:
    image: redis
    services:
      - name: db
        image: redis
        ready: {command: redis-cli ping, timeout: 30s, interval: 1s}
    script: ['$INTEG']
YAML

cat >"$REPO/docker-pipeline.sh" <<SH
#!/usr/bin/env bash
# What a CI job runs to do the same with docker.
set -euo pipefail
cd "$REPO"
$DOCKER build -q --network none -t $TAG_DOCKER app >/dev/null &
$DOCKER build -q --network none -t forge-bench-redis redis >/dev/null &
wait
$DOCKER run --rm --network none --label forge-bench $TAG_DOCKER sh -e -c '$LINT' &
lint=\$!
$DOCKER run --rm --network none --label forge-bench $TAG_DOCKER sh -e -c '$UNIT' >/dev/null &
unit=\$!
svc=\$($DOCKER run -d --network none --label forge-bench forge-bench-redis)
trap '$DOCKER rm -f "\$svc" >/dev/null' EXIT
until $DOCKER run --rm --network container:\$svc forge-bench-redis redis-cli ping >/dev/null 2>&1; do sleep 1; done
$DOCKER run --rm --network container:\$svc --label forge-bench forge-bench-redis sh -e -c '$INTEG' >/dev/null
wait \$lint; wait \$unit
$DOCKER push -q $TAG_DOCKER >/dev/null
SH
chmod +x "$REPO/docker-pipeline.sh"

install -m 0755 "$forge_src" "$WORK/bin/forge"
if [ -n "$BENCH_USER" ]; then
  chown -R "$BENCH_USER:" "$WORK/forge" "$REPO"
  AS_FORGE="runuser -u $BENCH_USER -- env"
  forge_who="$BENCH_USER, rootless"
else
  AS_FORGE="env"
  forge_who="$(id -un)"
fi
FORGE_CMD="sh -c 'cd $REPO && $AS_FORGE FORGE_ROOT=$WORK/forge/root $WORK/bin/forge run --artifacts-dir $WORK/forge/artifacts >$WORK/logs/forge.log 2>&1'"

start_dockerd "$WORK" "$REGISTRY" || exit 1
$DOCKER pull -q "$BASE" >/dev/null
WIPE_DOCKER="$DOCKER image rm -f $TAG_DOCKER forge-bench-redis >/dev/null 2>&1; $DOCKER builder prune -af >/dev/null; sync"
WIPE_FORGE="rm -rf $WORK/forge/root; sync"

# Each must pass once, untimed, before it is timed.
sh -c "$FORGE_CMD" || { echo "pipeline.sh: forge run failed:" >&2; tail -n 30 "$WORK/logs/forge.log" >&2; exit 1; }
"$REPO/docker-pipeline.sh" >"$WORK/logs/docker.log" 2>&1 || { echo "pipeline.sh: the docker script failed:" >&2; tail -n 30 "$WORK/logs/docker.log" >&2; exit 1; }

echo "forge: $("$WORK/bin/forge" --version 2>/dev/null || echo forge) as $forge_who; docker: $($DOCKER version --format '{{.Server.Version}}')"
echo "== cold (every run from an empty cache)"
hyperfine -N --runs "$RUNS" --export-json "$WORK/results/cold.json" \
  --prepare "sh -c '$WIPE_FORGE'" -n forge "$FORGE_CMD" \
  --prepare "sh -c '$WIPE_DOCKER'" -n docker "$REPO/docker-pipeline.sh"
echo "== unchanged (the same pipeline again)"
hyperfine -N --runs "$RUNS" --warmup "$WARMUP" --export-json "$WORK/results/unchanged.json" \
  -n forge "$FORGE_CMD" -n docker "$REPO/docker-pipeline.sh" \
  -n "stat the contexts" "find $REPO/app $REPO/redis -printf '%s %T@ %m\n'"

python3 - "$WORK/results" <<'PY'
import json, sys, os
d = sys.argv[1]
def medians(name):
    r = json.load(open(os.path.join(d, name)))["results"]
    return {x["command"]: x["median"] for x in r}
cold, same = medians("cold.json"), medians("unchanged.json")
print()
print(f"{'case':<10} {'forge':>9} {'docker':>9} {'forge/docker':>13}")
for case, m in (("cold", cold), ("unchanged", same)):
    print(f"{case:<10} {m['forge']:>8.3f}s {m['docker']:>8.3f}s {m['forge'] / m['docker']:>13.2f}")
floor = same["stat the contexts"]
print(f"unchanged forge run {same['forge']:.3f}s beside stat-ing the contexts' files {floor:.3f}s "
      f"({same['forge'] / floor:.1f}x)")
PY
