#!/usr/bin/env bash
# Writes the build contexts that benches/build.sh times forge, docker and buildah on:
#   DIR/parallel   two independent 2-second stages, a final stage copying from both
#   DIR/heavy      one RUN writing 64 MiB of random bytes and 20,000 small files
#   DIR/monorepo   a 10,000-file context: one package copied first, then the whole tree
# Usage: benches/build-fixtures.sh DIR [BASE_IMAGE]. Needs python3 (the monorepo's files).
set -euo pipefail

dir=${1:?usage: build-fixtures.sh DIR [BASE_IMAGE]}
base=${2:-${FORGE_TEST_BUSYBOX:-127.0.0.1:5000/forge-test/busybox:latest}}
files=${FORGE_BENCH_FILES:-10000}

mkdir -p "$dir/parallel" "$dir/heavy" "$dir/monorepo"

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

# The file that the one-file-change case rewrites: read only by `COPY . /src`.
echo "packages/pkg007/src/file00007.txt" >"$dir/monorepo.changed"
