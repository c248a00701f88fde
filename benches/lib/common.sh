# Sourced by the bench scripts: what each needs around the timed commands.
#   require_root_and_loopback NAME REGISTRY   exits unless root, with a loopback registry (the
#                         network rule: benches talk to 127.0.0.0/8 only)
#   forge_binary NAME     the forge binary to time ($FORGE_BIN, else a release build); prints its path
#   unmount_under DIR     unmounts whatever is mounted below DIR, deepest first
#   install_quietly PKG.. installs Debian packages without starting their services
#   start_private_registry WORKDIR NAME, stop_private_registry: Debian's Distribution registry on a
#     free loopback port, its storage and logs under WORKDIR (access log on: WORKDIR/logs/
#     registry-access.log); sets PRIV (host:port) and REGISTRY_PID
#   start_dockerd WORKDIR REGISTRY, stop_dockerd: a private, loopback-only dockerd for a peer run
#     side by side.
# Data root, exec root, pidfile and unix socket live under WORKDIR/docker; no TCP listener,
# `--bridge=none --iptables=false`: containers get no network but their own (or another
# container's, with --network container:ID). REGISTRY (a loopback host:port) is insecure (plain
# http). Exports DOCKER_HOST and DOCKER_CONFIG (an empty client config: no credentials or plugins of
# the host's user) and sets DOCKERD_PID; stop_dockerd ends it.
PRIV=""
REGISTRY_PID=""

start_private_registry() {
  local work=$1 name=$2 port
  mkdir -p "$work/registry" "$work/logs"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  PRIV=127.0.0.1:$port
  cat >"$work/registry/config.yml" <<CONFIG
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $work/registry/storage
  delete:
    enabled: true
http:
  addr: $PRIV
CONFIG
  # The access log (combined log format) goes to stdout, the registry's own log to stderr.
  docker-registry serve "$work/registry/config.yml" >"$work/logs/registry-access.log" 2>"$work/logs/registry.log" &
  REGISTRY_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null --max-time 2 "http://$PRIV/v2/" 2>/dev/null && return 0
    kill -0 "$REGISTRY_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name: the private registry did not answer on $PRIV:" >&2
  tail -n 20 "$work/logs/registry.log" >&2
  return 1
}

# stop_background NAME: ends the background process whose pid the variable NAME holds, and clears it.
stop_background() {
  local name=$1 pid=${!1}
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  printf -v "$name" '%s' ""
}

stop_private_registry() { stop_background REGISTRY_PID; }

DOCKER=${DOCKER:-/usr/bin/docker} # Debian's docker.io client, whatever else is first on PATH
DOCKERD_PID=""

start_dockerd() {
  local work=$1 registry=$2
  mkdir -p "$work/docker/config" "$work/logs"
  export DOCKER_HOST=unix://$work/docker/docker.sock DOCKER_CONFIG=$work/docker/config
  echo '{}' >"$DOCKER_CONFIG/config.json"
  printf '{ "insecure-registries": ["%s"] }\n' "$registry" >"$work/docker/daemon.json"
  /usr/sbin/dockerd --config-file "$work/docker/daemon.json" \
    --data-root "$work/docker/data" --exec-root "$work/docker/exec" --pidfile "$work/docker/docker.pid" \
    -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --userland-proxy=false >"$work/logs/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 120); do
    $DOCKER version >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  tail -n 20 "$work/logs/dockerd.log" >&2
  return 1
}

stop_dockerd() { stop_background DOCKERD_PID; }

# Installs Debian's packages named in "$@" when any is missing, without starting any service
# (docker.io would start a system dockerd with a bridge network: policy-rc.d's 101 says no).
install_quietly() {
  local guard="" status=0
  [ $# = 0 ] && return 0
  echo "installing from Debian: $*"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    guard=1
  fi
  apt-get update -qq || status=$?
  [ "$status" = 0 ] && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || status=$?; }
  [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
  [ "$status" = 0 ] || { echo "apt-get failed ($status)" >&2; return 1; }
  if [[ " $* " == *" docker.io "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now docker.socket docker.service >/dev/null 2>&1 || true
  fi
}

# The forge binary a bench times: $FORGE_BIN, else `cargo build --release -p forge` in the
# checkout at $ROOT. NAME is the calling script's, for the error.
forge_binary() {
  local name=$1 bin
  if [ -n "${FORGE_BIN:-}" ]; then
    bin=$FORGE_BIN
  else
    (cd "$ROOT" && cargo build --release --quiet -p forge) || return 1
    bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/forge
  fi
  [ -x "$bin" ] || { echo "$name: no forge binary at $bin" >&2; return 1; }
  echo "$bin"
}

# Unmounts whatever the engines left mounted below DIR (containers/storage keeps its overlay home
# bind-mounted), deepest first.
unmount_under() {
  awk -v w="$1/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m"
  done
}

require_root_and_loopback() {
  local name=$1 registry=$2
  [ "$(id -u)" = 0 ] || { echo "$name: run as root (it installs packages and starts a private dockerd)" >&2; exit 2; }
  case "$registry" in
    127.* | localhost | localhost:*) ;;
    *) echo "$name: the base image must come from a loopback registry, not $registry" >&2; exit 2 ;;
  esac
}
