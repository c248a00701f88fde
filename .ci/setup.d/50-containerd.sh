# A private containerd 1.6 (Debian's) for the containerd backend's tests: its own root, state, socket and
# config, so it never meets a system containerd. runc is the runtime because crun refuses the hybrid
# cgroup layout of these hosts; the CRI plugin is off since nothing here speaks Kubernetes.
# Sourced by .ci/run as root with `set -euo pipefail`; safe to run twice.

forge_ctrd_root=/var/lib/forge-ci/containerd
forge_ctrd_state=/run/forge-ci/containerd
forge_ctrd_sock=$forge_ctrd_state/containerd.sock
forge_ctrd_conf=/etc/forge-ci/containerd.toml
forge_ctrd_log=/var/log/forge-ci/containerd.log

# Answering `ctr version` means the gRPC server is up, not merely that the socket file exists.
forge_ctrd_answers() {
  [ -S "$forge_ctrd_sock" ] && ctr --address "$forge_ctrd_sock" version >/dev/null 2>&1
}

if forge_ctrd_answers; then
  echo "containerd already answers on $forge_ctrd_sock"
else
  mkdir -p "$forge_ctrd_root" "$forge_ctrd_state" "$(dirname "$forge_ctrd_conf")" "$(dirname "$forge_ctrd_log")"
  cat >"$forge_ctrd_conf" <<EOF
version = 2
root = "$forge_ctrd_root"
state = "$forge_ctrd_state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$forge_ctrd_sock"

[ttrpc]
  address = "$forge_ctrd_state/containerd.sock.ttrpc"

[debug]
  address = "$forge_ctrd_state/debug.sock"
  level = "info"
EOF
  # A socket left by a killed daemon would make the wait below pass too early or the bind fail.
  rm -f "$forge_ctrd_sock" "$forge_ctrd_state/containerd.sock.ttrpc"
  # setsid: the daemon must outlive the sourcing shell and not receive its terminal's signals.
  setsid containerd --config "$forge_ctrd_conf" >>"$forge_ctrd_log" 2>&1 </dev/null &
  forge_ctrd_waited=0
  until forge_ctrd_answers; do
    if [ "$forge_ctrd_waited" -ge 30 ]; then
      echo "containerd did not answer on $forge_ctrd_sock within 30 s; last log lines:" >&2
      tail -n 30 "$forge_ctrd_log" >&2
      exit 1
    fi
    sleep 1
    forge_ctrd_waited=$((forge_ctrd_waited + 1))
  done
  echo "containerd started on $forge_ctrd_sock (log: $forge_ctrd_log)"
fi

export CONTAINERD_ADDRESS=$forge_ctrd_sock
