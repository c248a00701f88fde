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
