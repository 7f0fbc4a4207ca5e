#!/usr/bin/env bash
# Purpose: run every cargo-fuzz target under fuzz/fuzz_targets for a bounded
# time each (libFuzzer, nightly toolchain), keeping each target's corpus in
# fuzz/corpus/<target> between runs, and report which targets crashed. The
# one fuzzing entry point: CI's .ci/fuzz calls it with a short time.
#
# Usage: fuzz/run.sh [target ...]        (default: every target)
#   FUZZ_SECONDS [60]   seconds per target (libFuzzer -max_total_time)
#   FUZZ_RSS_MB [2048]  memory limit per target (libFuzzer -rss_limit_mb)
#   FUZZ_NICE [10]      niceness of the fuzzing processes (a shared machine)
#
# A crash leaves its reproducer in fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# and turn it into a regression test next to the parser concerned.
#
# Must never: run unbounded, or hide a crash (exit status 1 when any target
# crashed or failed to build).
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
NICENESS="${FUZZ_NICE:-10}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain installed; skipping (rustup toolchain install nightly)" >&2
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked || { echo "fuzz: cannot install cargo-fuzz" >&2; exit 1; }
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
  echo "-- fuzz $target for ${SECONDS_PER_TARGET}s"
  mkdir -p "fuzz/corpus/$target"
  if ! nice -n "$NICENESS" cargo +nightly fuzz run "$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_MB" -print_final_stats=1; then
    failed+=("$target")
    echo "-- fuzz $target FAILED: see fuzz/artifacts/$target/" >&2
  fi
done

echo "fuzz: ${#targets[@]} targets, ${#failed[@]} failed${failed[*]:+: ${failed[*]}}"
[ "${#failed[@]}" -eq 0 ]
