#!/usr/bin/env bash
# Builds forge's image with forge itself and prints its digest:
#   image/build.sh REF [--push]
# 1. a static forge: `cargo build --release --target x86_64-unknown-linux-musl` (adds the rustup
#    target and Debian's musl-tools when missing);
# 2. a context with it, the machine's CA roots, Debian's static busybox, newuidmap/newgidmap and
#    their libraries, and /etc files for root and a user `forge` (uid 1000, subordinate ids
#    100000-165535);
# 3. `forge build` of image/Dockerfile with that static forge, SOURCE_DATE_EPOCH from the last
#    commit, so the same commit and inputs give the same digest.
# Run as root (or as a user forge can build as). FORGE_STATIC_BIN names an already built static
# forge to skip step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: image/build.sh REF [--push]}
shift
target=x86_64-unknown-linux-musl
bin=${FORGE_STATIC_BIN:-}
if [ -z "$bin" ]; then
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
  fi
  if ! command -v musl-gcc >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
  fi
  # No debug info in the image's binary (the release profile keeps it for profiling).
  CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --target "$target" -p forge >&2
  bin=${CARGO_TARGET_DIR:-target}/$target/release/forge
fi
if file -L "$bin" | grep -q "dynamically linked"; then
  echo "$bin is not a static binary" >&2
  exit 1
fi

ctx=$(mktemp -d /var/tmp/forge-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/forge"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
cp /bin/busybox "$ctx/busybox"
cp /usr/bin/newuidmap /usr/bin/newgidmap "$ctx/"
mkdir -p "$ctx/lib" "$ctx/etc"
# Each library a map tool links (`name => /path`) and the loader (a line that is only a path).
for lib in $(ldd /usr/bin/newuidmap /usr/bin/newgidmap | awk '$2 == "=>" && $3 ~ /^\// {print $3} NF == 2 && $1 ~ /^\// {print $1}' | sort -u); do
  mkdir -p "$ctx/lib$(dirname "$lib")"
  cp -L "$lib" "$ctx/lib$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\nforge:x:1000:1000:forge:/home/forge:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ctx/etc/passwd"
printf 'root:x:0:\nforge:x:1000:\nnogroup:x:65534:\n' >"$ctx/etc/group"
printf 'forge:100000:65536\n' >"$ctx/etc/subuid"
printf 'forge:100000:65536\n' >"$ctx/etc/subgid"
cp image/Dockerfile "$ctx/Dockerfile"

epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
# Progress on stderr; forge build prints the image's digest on stdout.
SOURCE_DATE_EPOCH=$epoch "$bin" build --progress plain -t "$ref" "$@" "$ctx"
