#!/usr/bin/env bash
# Runs one fuzz target for a bounded time and prints libFuzzer's last status line.
#   builder/fuzz/run.sh TARGET SECONDS
# TARGET is parse, lex or pipeline. The corpus grows in fuzz/corpus/TARGET (not committed); the
# committed seeds (fuzz/seeds/TARGET: the deep-nesting inputs that once overflowed the stack) and, when
# present, BuildKit's parser and lexer test data in ../shared/conformance are read as extra seeds.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
target=${1:?target: parse, lex or pipeline}
seconds=${2:-3600}
cd "$(dirname "$0")/.."
seeds=("fuzz/seeds/$target")
shared=../../shared/conformance/buildkit
case $target in
  parse) [ -d "$shared/parser" ] && seeds+=("$shared/parser/testfiles") ;;
  lex) ;;
  pipeline) [ -d ../testdata/pipelines ] && seeds+=(../testdata/pipelines) ;;
esac
mkdir -p "fuzz/corpus/$target"
dict=()
[ "$target" = parse ] && dict=(-dict=fuzz/dockerfile.dict)
exec cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=200000 -print_final_stats=1 "${dict[@]}"
