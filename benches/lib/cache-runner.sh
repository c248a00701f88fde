#!/usr/bin/env bash
# One runner's part of benches/cache.sh, run by hyperfine (timed: `build TOOL 2`; untimed, as its
# --prepare: `prepare TOOL CASE`) and by cache.sh itself.
#   fresh TOOL N       empties runner N's state: forge a new FORGE_ROOT; docker its dockerd stopped
#                      and started again on an empty data-root; buildah a new --root/--runroot
#   build TOOL 1       runner 1: builds the monorepo, exports the cache, pushes the image as :main
#   build TOOL 2       runner 2: builds it importing that cache, pushes the image as :pr (runner 1's
#                      cache and image stay as runner 1 left them, so every run starts alike)
#   prepare TOOL CASE  before each timed runner-2 build: fresh TOOL 2; for CASE onefile rewrites
#                      BENCH_CHANGED; then appends "CASE TOOL OFFSET" to the offsets file, OFFSET
#                      being where the registry's access log ends, so cache.sh can tell which
#                      requests each run made
#   stop docker        stops the dockerd
# Settings, from cache.sh's environment: BENCH_WORK (scratch dir), BENCH_REGISTRY (the private
# registry, 127.0.0.1:PORT), BENCH_CONTEXT (the monorepo fixture), BENCH_CHANGED (its file that only
# `COPY . /src` reads), BENCH_FORGE (forge binary), BENCH_DOCKER_BUILDER (buildkit or classic).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=benches/lib/common.sh
source "$ROOT/benches/lib/common.sh"

action=${1:?usage: cache-runner.sh fresh|build|prepare|stop TOOL [N|CASE]} tool=${2:?TOOL} arg=${3:-}
W=$BENCH_WORK
R=$BENCH_REGISTRY
CTX=$BENCH_CONTEXT

# docker: one dockerd at a time, started by start_dockerd under $W/dockerd (data-root
# $W/dockerd/docker/data); its pid is read back from the pidfile, the shell that started it is gone.
DOCKERD_WORK=$W/dockerd
export DOCKER_HOST=unix://$DOCKERD_WORK/docker/docker.sock DOCKER_CONFIG=$DOCKERD_WORK/docker/config
stop_docker() {
  local pidfile=$DOCKERD_WORK/docker/docker.pid pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  # Gone, or a zombie its new parent has not reaped yet.
  for _ in $(seq 1 150); do
    if [ ! -e "/proc/$pid" ] || grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then break; fi
    sleep 0.2
  done
  rm -f "$pidfile"
}

buildah_cmd() {
  echo "buildah --root $W/buildah/r$1/root --runroot $W/buildah/r$1/run --storage-driver overlay"
}
# No credentials of the host's user for buildah (it reads ~/.docker/config.json and
# ${XDG_RUNTIME_DIR}/containers/auth.json otherwise) nor forge.
export REGISTRY_AUTH_FILE=$W/buildah/auth.json
[ -e "$REGISTRY_AUTH_FILE" ] || { mkdir -p "$W/buildah" && echo '{"auths":{}}' >"$REGISTRY_AUTH_FILE"; }

fresh() {
  local n=$1 b
  case $tool in
    forge)
      unmount_under "$W/forge/r$n"
      rm -rf "$W/forge/r$n"
      ;;
    docker)
      stop_docker
      unmount_under "$DOCKERD_WORK"
      rm -rf "$DOCKERD_WORK/docker/data" "$DOCKERD_WORK/docker/exec"
      start_dockerd "$DOCKERD_WORK" "$R"
      ;;
    buildah)
      b=$(buildah_cmd "$n")
      if [ -d "$W/buildah/r$n" ]; then
        $b rm -a >/dev/null 2>&1 || true
        $b rmi -af >/dev/null 2>&1 || true
      fi
      unmount_under "$W/buildah/r$n"
      rm -rf "$W/buildah/r$n"
      ;;
  esac
}

build() {
  local n=$1 img=$R/$tool/mono b cache
  case $tool in
    forge)
      cache=type=registry,ref=$R/forge/mono:cache
      if [ "$n" = 1 ]; then
        HOME=$W/forge FORGE_ROOT=$W/forge/r1 "$BENCH_FORGE" build --network none --progress plain \
          -t "$img:main" --push --cache-to "$cache,mode=max" --cache-from "$cache" "$CTX"
      else
        HOME=$W/forge FORGE_ROOT=$W/forge/r2 "$BENCH_FORGE" build --network none --progress plain \
          -t "$img:pr" --push --cache-from "$cache" "$CTX"
      fi
      ;;
    docker)
      if [ "$BENCH_DOCKER_BUILDER" = buildkit ]; then
        # BuildKit's inline cache: the cache metadata rides in the image's config, so the cache
        # ref is an image (runner 1's, also tagged :cache).
        export DOCKER_BUILDKIT=1
        if [ "$n" = 1 ]; then
          $DOCKER build --network none --build-arg BUILDKIT_INLINE_CACHE=1 \
            -t "$img:main" -t "$img:cache" "$CTX"
        else
          $DOCKER build --network none --cache-from "$img:cache" -t "$img:pr" "$CTX"
        fi
      else
        # The classic builder: --cache-from takes a local image, so runner 2 pulls it first.
        export DOCKER_BUILDKIT=0
        if [ "$n" = 1 ]; then
          $DOCKER build --network none -t "$img:main" -t "$img:cache" "$CTX"
        else
          $DOCKER pull "$img:cache"
          $DOCKER build --network none --cache-from "$img:cache" -t "$img:pr" "$CTX"
        fi
      fi
      if [ "$n" = 1 ]; then
        $DOCKER push "$img:main"
        $DOCKER push "$img:cache"
      else
        $DOCKER push "$img:pr"
      fi
      ;;
    buildah)
      b=$(buildah_cmd "$n")
      # buildah's cache is a repository of one image per cached step, tagged with the step's key.
      if [ "$n" = 1 ]; then
        $b bud --layers --network none --tls-verify=false \
          --cache-to "$R/buildah/mono-cache" --cache-from "$R/buildah/mono-cache" -t "$img:main" "$CTX"
        $b push --tls-verify=false "$img:main"
      else
        $b bud --layers --network none --tls-verify=false \
          --cache-from "$R/buildah/mono-cache" -t "$img:pr" "$CTX"
        $b push --tls-verify=false "$img:pr"
      fi
      ;;
  esac
}

case $action in
  fresh) fresh "$arg" ;;
  build) build "$arg" ;;
  prepare)
    fresh 2
    [ "$arg" != onefile ] || head -c 2048 /dev/urandom >"$CTX/$BENCH_CHANGED"
    sync
    echo "$arg $tool $(stat -c %s "$W/logs/registry-access.log")" >>"$W/results/offsets"
    ;;
  stop) [ "$tool" != docker ] || stop_docker ;;
  *) echo "cache-runner.sh: unknown action $action" >&2; exit 2 ;;
esac
