#!/usr/bin/env bash
# Runs every archfarm test on a fresh Debian/Ubuntu machine: installs and starts what the
# end-to-end tests need (Docker Engine, the CNCF registry, skopeo, busybox fixtures) through
# scripts/setup.sh, builds the binaries the tests start, then runs unit and end-to-end tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked "$@"
else
  cargo test --workspace --locked "$@"
fi
