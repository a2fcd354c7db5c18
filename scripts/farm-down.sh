#!/usr/bin/env bash
# Stops the processes scripts/farm-up.sh started. Idempotent. dockerd is left running; the
# registry's data, the CA and the caches stay in .farm/ for the next farm-up.
set -euo pipefail
farm="$(cd "$(dirname "$0")/.." && pwd)/.farm"
for name in agent-arm64 agent-amd64 coordinator registry; do
  pidfile="$farm/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    printf 'farm-down: stopped %s (pid %s)\n' "$name" "$pid"
  fi
  rm -f "$pidfile"
done
