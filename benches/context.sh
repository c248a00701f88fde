#!/usr/bin/env bash
# Context hashing cost on a 10,000-file context: a cold hash (no memo), a no-op re-hash with the
# memo, and a re-hash after a one-file change. Target: the no-op re-hash under 0.1 s.
# Needs hyperfine; builds the `context_hash` example in release mode.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
work="${FORGE_BENCH_DIR:-/tmp/forge-bench-context}"
ctx="$work/ctx"
state="$work/state"
files="${FORGE_BENCH_FILES:-10000}"

command -v hyperfine >/dev/null || { echo "hyperfine is required (apt-get install hyperfine)" >&2; exit 1; }

(cd "$here" && cargo build --release -p forge-builder --example context_hash)
bin="${CARGO_TARGET_DIR:-$here/target}/release/examples/context_hash"

if [ ! -f "$work/.complete-$files" ]; then
    rm -rf "$work"
    mkdir -p "$ctx"
    # 100 directories of $files/100 files, 1-4 KiB each, like a source monorepo; plus ignored junk.
    python3 - "$ctx" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
for i in range(n):
    d = os.path.join(root, f"pkg{i % 100:03d}", "src")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.txt"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 4096)))
os.makedirs(os.path.join(root, "node_modules", "junk"), exist_ok=True)
for i in range(500):
    open(os.path.join(root, "node_modules", "junk", f"j{i}"), "w").write("junk")
open(os.path.join(root, ".dockerignore"), "w").write("node_modules\n*.log\n")
PY
    # Out of the memo's racy window (files modified within a second of hashing are always re-read).
    find "$ctx" -exec touch -h -d '1 hour ago' {} +
    touch "$work/.complete-$files"
fi

echo "context: $(find "$ctx" -type f | wc -l) files under $ctx"
hyperfine --warmup 1 --runs 10 --export-json "$work/cold.json" \
    --prepare "rm -rf '$state'" \
    -n "cold hash (no memo)" "'$bin' '$ctx' '$state'"
"$bin" "$ctx" "$state" >/dev/null
hyperfine --warmup 2 --runs 20 --export-json "$work/noop.json" \
    -n "no-op re-hash (memo)" "'$bin' '$ctx' '$state'"
hyperfine --warmup 2 --runs 20 --export-json "$work/one.json" \
    --prepare "head -c 2048 /dev/urandom > '$ctx/pkg007/src/file00007.txt'" \
    -n "one-file change (memo)" "'$bin' '$ctx' '$state'"
echo "last run: $("$bin" "$ctx" "$state")"
noop=$(python3 -c "import json;print(json.load(open('$work/noop.json'))['results'][0]['mean'])")
python3 -c "import sys; m=float('$noop'); print(f'no-op mean {m*1000:.1f} ms (target < 100 ms):', 'OK' if m < 0.1 else 'MISSED'); sys.exit(0 if m < 0.1 else 1)"
