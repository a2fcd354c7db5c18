#!/usr/bin/env bash
# Fuzzes the frame reader and the message decoders with cargo fuzz (libFuzzer + AddressSanitizer).
#   scripts/fuzz.sh            short bounded run of each target (the test suite runs this)
#   scripts/fuzz.sh --long     1,000,000 executions of each target (docs/reliability.md)
# Any crash, sanitizer report, leak, or allocation over the limit fails the run. The stable
# toolchain is used with RUSTC_BOOTSTRAP=1 for the sanitizer flags cargo fuzz needs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=100000
max_time=60
if [ "${1:-}" = "--long" ]; then
  runs=1000000
  max_time=3600
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cd "$root/shared"
for target in frame message; do
  echo "fuzz: $target, $runs runs"
  # -malloc_limit_mb: no single allocation may exceed what the codec's limits allow.
  # The status is cargo fuzz's own: it also fails when a target does not compile.
  set +e
  cargo fuzz run "$target" --release -- \
    -runs="$runs" -max_total_time="$max_time" -rss_limit_mb=1024 -malloc_limit_mb=64 -max_len=65536 \
    >"/tmp/archfarm-fuzz-$target.log" 2>&1
  status=$?
  set -e
  grep -E '^(Done|#[0-9]+ +DONE|INFO: -max_total|==|SUMMARY|error)' "/tmp/archfarm-fuzz-$target.log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target failed (exit $status); see /tmp/archfarm-fuzz-$target.log and shared/fuzz/artifacts/"
    exit 1
  fi
done
echo "fuzz: both targets ran clean"
