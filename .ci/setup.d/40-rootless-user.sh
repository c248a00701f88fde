# An unprivileged user with a subordinate id range, for the rootless runner tests (the embedded backend
# maps 65,536 ids through newuidmap/newgidmap as rootless podman does). Idempotent.
FORGE_TEST_USER=${FORGE_TEST_USER:-forge-ci}
if ! id -u "$FORGE_TEST_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash --user-group "$FORGE_TEST_USER"
fi
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if ! grep -q "^${FORGE_TEST_USER}:" "$f"; then
    echo "${FORGE_TEST_USER}:100000:65536" >>"$f"
  fi
done
# newuidmap/newgidmap must be setuid (or carry the setuid capability) to write maps for the user.
for b in /usr/bin/newuidmap /usr/bin/newgidmap; do
  if [ -x "$b" ] && ! [ -u "$b" ] && ! getcap "$b" 2>/dev/null | grep -q cap_set; then
    chmod u+s "$b"
  fi
done
export FORGE_TEST_USER
