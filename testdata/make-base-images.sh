#!/usr/bin/env bash
# Builds forge's two test base images without the internet and pushes them to $FORGE_TEST_REGISTRY:
#   forge-test/busybox:latest   /bin/busybox from Debian's busybox-static, applet symlinks, a `tester` user
#   forge-test/debian:bookworm  debootstrap --variant=minbase from the Debian mirror apt already uses
# umoci builds the OCI layouts and skopeo pushes them: test tooling only, never product code.
# Idempotent: an image already in the registry is left alone (FORGE_REBUILD_BASE_IMAGES=1 forces).
set -euo pipefail

registry=${FORGE_TEST_REGISTRY:-127.0.0.1:5000}
cache=${FORGE_CI_CACHE:-/var/cache/forge-ci}
rebuild=${FORGE_REBUILD_BASE_IMAGES:-0}
mkdir -p "$cache"

for tool in umoci skopeo debootstrap; do
  command -v "$tool" >/dev/null || { echo "make-base-images: $tool is not installed" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "make-base-images: /bin/busybox (busybox-static) is missing" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "make-base-images: must run as root (debootstrap, file owners)" >&2; exit 1; }

work=$(mktemp -d /tmp/forge-base-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

in_registry() {
  skopeo inspect --raw --tls-verify=false "docker://$registry/$1" >/dev/null 2>&1
}

# The OCI platform name for this machine's architecture (umoci new takes Go's runtime values).
oci_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    armv7l) echo arm ;;
    *) uname -m ;;
  esac
}

# push LAYOUT TAG NAME: copy an OCI layout's tag to the registry.
push() {
  skopeo copy --quiet --dest-tls-verify=false "oci:$1:$2" "docker://$registry/$3"
  echo "make-base-images: pushed $registry/$3"
}

# new_image LAYOUT TAG BUNDLE: an empty image unpacked into BUNDLE, ready to fill BUNDLE/rootfs.
new_image() {
  [ -d "$1" ] || umoci init --layout "$1"
  umoci new --image "$1:$2"
  umoci unpack --image "$1:$2" "$3" >/dev/null
}

make_busybox() {
  local layout=$work/busybox bundle=$work/busybox-bundle root
  new_image "$layout" latest "$bundle"
  root=$bundle/rootfs
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home/tester,proc,sys,dev,var/log}
  install -m 0755 /bin/busybox "$root/bin/busybox"
  # `busybox --install -s` semantics: one absolute symlink to /bin/busybox per applet at its usual path.
  local applet
  while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sfn /bin/busybox "$root/$applet"
  done < <(/bin/busybox --list-full)
  cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
tester:x:1000:1000:forge test user:/home/tester:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
  cat > "$root/etc/group" <<'GROUP'
root:x:0:
tester:x:1000:
nogroup:x:65534:
GROUP
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
  install -d -m 1777 "$root/tmp"
  install -d -m 0700 "$root/root"
  chown 1000:1000 "$root/home/tester"
  chmod 0755 "$root/home/tester"
  umoci repack --image "$layout:latest" "$bundle" >/dev/null
  umoci config --image "$layout:latest" --architecture "$(oci_arch)" --os linux \
    --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin --config.cmd sh \
    --history.created_by "forge make-base-images.sh busybox"
  push "$layout" latest forge-test/busybox:latest
}

# The first Debian (non-security) mirror apt is configured with, deb822 or one-line style.
debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    awk '/^[[:space:]]*URIs:/ {for (i = 2; i <= NF; i++) print $i}
         /^[[:space:]]*deb[[:space:]]/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' |
    grep -E '/debian/?$' | head -n1)
  echo "${FORGE_DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

make_debian() {
  local tarball=$cache/debian-bookworm-minbase.tar
  if [ ! -s "$tarball" ]; then
    local mirror target=$work/debootstrap
    mirror=$(debian_mirror)
    echo "make-base-images: debootstrap bookworm from $mirror (cached in $tarball afterwards)"
    debootstrap --variant=minbase --arch="$(dpkg --print-architecture)" bookworm "$target" "$mirror" \
      >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    # What a container image leaves out: the package cache, apt lists, and the device nodes
    # debootstrap made in /dev (a runtime mounts its own /dev).
    rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* "$target"/dev/*
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$target" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
  fi
  local layout=$work/debian bundle=$work/debian-bundle
  new_image "$layout" bookworm "$bundle"
  tar --numeric-owner --xattrs --xattrs-include='*' -C "$bundle/rootfs" -xpf "$tarball"
  umoci repack --image "$layout:bookworm" "$bundle" >/dev/null
  umoci config --image "$layout:bookworm" --architecture "$(oci_arch)" --os linux \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.cmd bash \
    --history.created_by "forge make-base-images.sh debootstrap --variant=minbase bookworm"
  push "$layout" bookworm forge-test/debian:bookworm
}

if [ "$rebuild" = 1 ] || ! in_registry forge-test/busybox:latest; then
  make_busybox
else
  echo "make-base-images: $registry/forge-test/busybox:latest already present"
fi
if [ "$rebuild" = 1 ] || ! in_registry forge-test/debian:bookworm; then
  make_debian
else
  echo "make-base-images: $registry/forge-test/debian:bookworm already present"
fi
