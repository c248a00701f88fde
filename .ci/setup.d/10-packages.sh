# Debian packages the build and the tests need. protoc builds containerd-client; the rest are the real
# services and the independent judges the tests use.
need=()
for pkg in protobuf-compiler docker-registry containerd runc busybox-static skopeo umoci uidmap redis-server \
           debootstrap fuse-overlayfs iproute2 procps git curl openssl chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
