#!/usr/bin/env bash
# Writes the build contexts that benches/build.sh times forge, docker and buildah on:
#   DIR/parallel   two independent 2-second stages, a final stage copying from both
#   DIR/heavy      one RUN writing 64 MiB of random bytes and 20,000 small files
#   DIR/monorepo   a 10,000-file context: one package copied first, then the whole tree
#   DIR/realapp    on Debian: gcc and libc6-dev from apt, a static hello.c built, only the binary kept
#   DIR/pip        on Debian: python3 and pip from apt, then django, sqlalchemy, numpy and requests
#                  (and their dependencies) from wheels
#   DIR/big        one RUN writing a 1 GiB file of random bytes (the memory case)
# realapp and pip install from the loopback mirror of benches/lib/mirror.sh, whose URL the build is
# given as `--build-arg MIRROR=http://127.0.0.1:PORT` (the port is chosen when the mirror starts):
# apt's sources become that mirror's flat repository alone, pip gets --no-index and its wheels.
# Usage: benches/build-fixtures.sh DIR [BASE_IMAGE [DEBIAN_IMAGE]]. Needs python3 (the monorepo's
# files).
set -euo pipefail

dir=${1:?usage: build-fixtures.sh DIR [BASE_IMAGE [DEBIAN_IMAGE]]}
base=${2:-${FORGE_TEST_BUSYBOX:-127.0.0.1:5000/forge-test/busybox:latest}}
debian=${3:-${FORGE_TEST_DEBIAN:-127.0.0.1:5000/forge-test/debian:bookworm}}
files=${FORGE_BENCH_FILES:-10000}

mkdir -p "$dir/parallel" "$dir/heavy" "$dir/monorepo" "$dir/realapp" "$dir/pip" "$dir/big"

# Random bytes: no codec can shrink them, so the whole GiB passes through every stage of the layer
# (diff, tar, compression, digest, upload) as itself.
cat >"$dir/big/Dockerfile" <<EOF
FROM $base
RUN head -c 1073741824 /dev/urandom > /big.bin
EOF

cat >"$dir/parallel/Dockerfile" <<EOF
FROM $base AS one
RUN sleep 2 && echo one > /one

FROM $base AS two
RUN sleep 2 && echo two > /two

FROM $base
COPY --from=one /one /one
COPY --from=two /two /two
EOF

# 200 directories of 100 files; the data comes from inside the build so every tool writes, diffs and
# stores the same layer shape (one 64 MiB incompressible file and many tiny ones).
cat >"$dir/heavy/Dockerfile" <<EOF
FROM $base
RUN head -c 67108864 /dev/urandom > /blob.bin \\
 && for d in \$(seq 1 200); do \\
      mkdir -p /files/d\$d; \\
      for f in \$(seq 1 100); do echo "dir \$d file \$f" > /files/d\$d/f\$f; done; \\
    done
EOF

# The first package is copied on its own (as a dependency-install step would be), so a change
# elsewhere re-runs only `COPY . /src` and the step after it.
cat >"$dir/monorepo/Dockerfile" <<EOF
FROM $base
COPY packages/pkg042/ /src/packages/pkg042/
RUN cat /src/packages/pkg042/src/* | wc -c > /pkg042.bytes
COPY . /src
RUN ls /src/packages | wc -l > /packages.count
EOF
printf '*.log\nbuild/\n' >"$dir/monorepo/.dockerignore"

if [ ! -f "$dir/.monorepo-complete-$files" ]; then
  rm -rf "$dir/monorepo/packages" "$dir/monorepo/build"
  # 100 packages of $files/100 source files, 1-4 KiB of random bytes each; plus ignored junk.
  python3 - "$dir/monorepo" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
for i in range(n):
    d = os.path.join(root, "packages", f"pkg{i % 100:03d}", "src")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.txt"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 4096)))
os.makedirs(os.path.join(root, "build"), exist_ok=True)
for i in range(200):
    with open(os.path.join(root, "build", f"out{i}.o"), "w") as f:
        f.write("ignored")
PY
  # Older than any tool's "modified just now, re-read to be safe" window, so a no-op rebuild can
  # trust the file metadata.
  find "$dir/monorepo" -exec touch -h -d '1 hour ago' {} +
  touch "$dir/.monorepo-complete-$files"
fi

# The first step of both Debian contexts: apt's one source is the mirror's flat repository
# (trusted=yes: its Release is unsigned), nothing recommended, as the mirror was filled.
# shellcheck disable=SC2016 # expanded by the build, not here
apt_from_mirror='ARG MIRROR
ARG DEBIAN_FRONTEND=noninteractive
RUN : "${MIRROR:?build with --build-arg MIRROR=http://127.0.0.1:PORT (benches/lib/mirror.sh)}" \
 && rm -f /etc/apt/sources.list.d/* \
 && echo "deb [trusted=yes] $MIRROR/debs ./" > /etc/apt/sources.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends'

cat >"$dir/realapp/Dockerfile" <<EOF
FROM $debian AS build
$apt_from_mirror gcc libc6-dev
COPY hello.c /src/hello.c
RUN gcc -static -O2 -o /hello /src/hello.c

FROM scratch
COPY --from=build /hello /hello
CMD ["/hello"]
EOF
cat >"$dir/realapp/hello.c" <<'EOF'
#include <stdio.h>

int main(void) {
    unsigned long sum = 0;
    for (unsigned long i = 1; i <= 1000; i++)
        sum += i * i;
    printf("hello, static world: the squares of 1..1000 sum to %lu\n", sum);
    return 0;
}
EOF

cat >"$dir/pip/Dockerfile" <<EOF
FROM $debian
$apt_from_mirror python3 python3-pip
RUN pip install --no-index --find-links "\$MIRROR/wheels/" --break-system-packages \\
      django sqlalchemy numpy requests \\
 && python3 -c 'import django, numpy, requests, sqlalchemy'
EOF

# The file that the one-file-change case rewrites: read only by `COPY . /src`.
echo "packages/pkg007/src/file00007.txt" >"$dir/monorepo.changed"
