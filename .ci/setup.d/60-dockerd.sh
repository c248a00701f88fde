# A private dockerd (Debian's docker.io) for the tests that need a real docker: forge run inside
# containers started with docker's default settings (issue 13), and docker as a judge of what forge
# builds. Its data root, exec root and socket live under /var/cache/forge-ci/docker; no bridge, no
# iptables, no TCP listener: containers get --network host (loopback, where the test registry is) or
# none. Sourced by .ci/run as root; idempotent: a dockerd already answering on the socket is reused.
# Exports FORGE_TEST_DOCKER_HOST.
forge_docker_dir=/var/cache/forge-ci/docker
forge_docker_sock=$forge_docker_dir/docker.sock
mkdir -p "$forge_docker_dir"

if ! command -v dockerd >/dev/null 2>&1; then
  # docker.io would start a system dockerd with a bridge network: policy-rc.d's 101 says no.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  rm -f /usr/sbin/policy-rc.d
  if [ -d /run/systemd/system ]; then
    systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
  fi
fi

if ! DOCKER_HOST=unix://$forge_docker_sock docker version >/dev/null 2>&1; then
  printf '{ "insecure-registries": ["%s"] }\n' "${FORGE_TEST_REGISTRY:-127.0.0.1:5000}" \
    >"$forge_docker_dir/daemon.json"
  # setsid: dockerd must outlive this shell (CI set-up, then the tests in a later process). Its own
  # containerd lives under the exec root, apart from the one 50-containerd.sh starts.
  setsid -f /usr/sbin/dockerd --config-file "$forge_docker_dir/daemon.json" \
    --data-root "$forge_docker_dir/data" --exec-root "$forge_docker_dir/exec" \
    --pidfile "$forge_docker_dir/docker.pid" -H "unix://$forge_docker_sock" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --userland-proxy=false >>"$forge_docker_dir/dockerd.log" 2>&1 </dev/null
  forge_wait_for 120 0.5 "dockerd on $forge_docker_sock" "$forge_docker_dir/dockerd.log" \
    env DOCKER_HOST="unix://$forge_docker_sock" docker version
fi
echo "dockerd: unix://$forge_docker_sock answers"
# The data root is kept between runs, and the tests leave images there (forge's image of each run, the
# images docker judged); what no container uses goes, so that runs on one machine do not fill its disk.
DOCKER_HOST=unix://$forge_docker_sock docker system prune --all --force | tail -n 1
export FORGE_TEST_DOCKER_HOST=unix://$forge_docker_sock
unset forge_docker_dir forge_docker_sock
