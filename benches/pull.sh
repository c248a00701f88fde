#!/usr/bin/env bash
# Benchmark: pull + unpack of the Debian base image from the loopback registry, forge (the
# snapshotter's `pull` example: store ingest with streamed sha256, then unpack with diff_id check)
# against `skopeo copy` + `umoci unpack`, side by side under hyperfine, cold store every run.
# Needs the CI rig (.ci/setup.d/20-registry.sh, 30-base-images.sh), hyperfine, skopeo, umoci; root.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${FORGE_TEST_DEBIAN:-127.0.0.1:5000/forge-test/debian:bookworm}
runs=${BENCH_RUNS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/forge-ci/target}
cargo build --release --quiet -p forge-snapshotter --example pull
forge_pull=$CARGO_TARGET_DIR/release/examples/pull
work=$(mktemp -d /tmp/forge-bench-pull.XXXXXX)
trap 'rm -rf "$work"' EXIT

hyperfine --style basic --warmup 1 --runs "$runs" \
  --export-markdown "$work/result.md" \
  --prepare "rm -rf $work/store $work/rootfs $work/oci $work/bundle" \
  -n "forge pull+unpack" \
  "$forge_pull $image --root $work/store --unpack $work/rootfs" \
  -n "skopeo copy + umoci unpack" \
  "skopeo copy --quiet --src-tls-verify=false docker://$image oci:$work/oci:img && umoci unpack --image $work/oci:img $work/bundle"
cat "$work/result.md"
