# A Distribution registry on loopback (plain http) for pull/push tests: Debian's docker-registry with its
# storage under /var/cache/forge-ci so pushed base images survive between CI runs on the same machine.
# Sourced by .ci/run as root; idempotent: a registry already answering on the address is reused.
forge_registry_addr=${FORGE_TEST_REGISTRY:-127.0.0.1:5000}
forge_registry_dir=/var/cache/forge-ci/registry
mkdir -p "$forge_registry_dir/storage"

if ! curl -fsS -o /dev/null --max-time 2 "http://$forge_registry_addr/v2/" 2>/dev/null; then
  # The packaged /etc/docker/registry/config.yml listens on every interface and asks for htpasswd;
  # the tests want loopback only and anonymous access, so write our own.
  cat > "$forge_registry_dir/config.yml" <<CONFIG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $forge_registry_dir/storage
  delete:
    enabled: true
http:
  addr: $forge_registry_addr
CONFIG
  # Every test pushes to repositories of its own, so storage kept between runs grows by each run's
  # pushes until the disk is full (a CI run once failed that way). Before the registry starts, only the
  # base images 30-base-images.sh makes are kept; garbage-collect then drops the blobs nothing refers to.
  forge_repos=$forge_registry_dir/storage/docker/registry/v2/repositories
  if [ -d "$forge_repos" ]; then
    find "$forge_repos" -mindepth 1 -maxdepth 1 ! -name forge-test -exec rm -rf {} +
    find "$forge_repos/forge-test" -mindepth 1 -maxdepth 1 ! -name busybox ! -name debian \
      -exec rm -rf {} + 2>/dev/null || true
    before=$(du -sm "$forge_registry_dir/storage" | cut -f1)
    docker-registry garbage-collect "$forge_registry_dir/config.yml" >/dev/null ||
      echo "registry: garbage-collect failed; the storage stays as it was" >&2
    echo "registry storage: ${before} MiB -> $(du -sm "$forge_registry_dir/storage" | cut -f1) MiB" \
      "(only the base images kept)"
  fi
  unset forge_repos before
  # setsid: the registry must outlive this shell (CI set-up, then the tests in a later process).
  setsid -f docker-registry serve "$forge_registry_dir/config.yml" \
    >>"$forge_registry_dir/registry.log" 2>&1 </dev/null
  forge_wait_for 100 0.1 "the registry on http://$forge_registry_addr/v2/" \
    "$forge_registry_dir/registry.log" \
    curl -fsS -o /dev/null --max-time 2 "http://$forge_registry_addr/v2/"
fi
echo "registry: http://$forge_registry_addr/v2/ answers"
export FORGE_TEST_REGISTRY=$forge_registry_addr
unset forge_registry_addr forge_registry_dir
