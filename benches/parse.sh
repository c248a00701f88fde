#!/usr/bin/env bash
# Parse + lower benchmark: the in-process figures (cargo bench), then the whole `forge graph --format
# json` command on the same generated 2,000-line Dockerfile under hyperfine.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo bench -p forge-builder --bench parse_lower
cargo bench -p forge-builder --bench parse_lower -- --write "$work/Dockerfile"
cargo build --release -p forge
target=${CARGO_TARGET_DIR:-target}
wc -l "$work/Dockerfile"
if command -v hyperfine >/dev/null; then
  hyperfine --warmup 5 --min-runs 30 \
    "$target/release/forge graph --format json --platform linux/amd64 -f $work/Dockerfile $work"
else
  echo "SKIP: hyperfine is not installed" >&2
fi
