# What the other set-up scripts share, sourced before them (by .ci/run and .ci/demo).

# forge_wait_for TRIES DELAY WHAT LOG CMD...: runs CMD (its output dropped) until it succeeds, at
# most TRIES times, DELAY seconds apart; when it never does, says "WHAT did not answer", shows the
# last lines of LOG and fails.
forge_wait_for() {
  local tries=$1 delay=$2 what=$3 log=$4
  shift 4
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep "$delay"
  done
  echo "$what did not answer; log:" >&2
  tail -n 20 "$log" >&2
  return 1
}
