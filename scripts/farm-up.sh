#!/usr/bin/env bash
# Brings up a local archfarm on this machine: Docker Engine, a registry on loopback, a
# coordinator and two agents, all in the background. Writes .farm/env (source it) and a pid file
# per process under .farm/. Idempotent: a farm already up is left as it is.
#
# The two agents share this host's Docker Engine. One builds linux/amd64 natively. The other
# declares linux/arm64: on amd64 hardware it STANDS IN for an arm64 host. Images it builds are
# genuinely arm64 only when their steps copy arm64 content (as examples/hello does); a RUN step
# would need real arm64 hardware. On a real farm that agent runs on an arm64 machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
farm="$root/.farm"
profile=${ARCHFARM_PROFILE:-release}
registry_port=${ARCHFARM_REGISTRY_PORT:-5000}
coordinator_port=${ARCHFARM_COORDINATOR_PORT:-7000}
status_port=${ARCHFARM_STATUS_PORT:-9464}
log() { printf 'farm-up: %s\n' "$*"; }

alive() { [ -f "$farm/$1.pid" ] && kill -0 "$(cat "$farm/$1.pid")" 2>/dev/null; }

"$root/scripts/setup.sh"

if alive coordinator && alive registry && alive agent-amd64 && alive agent-arm64; then
  log "the farm is already up (scripts/farm-down.sh stops it)"
  exit 0
fi

log "building archfarm ($profile)"
if [ "$profile" = release ]; then
  (cd "$root" && cargo build --release --bins -q)
  bin="$root/target/release"
else
  (cd "$root" && cargo build --bins -q)
  bin="$root/target/debug"
fi

mkdir -p "$farm"/{ca,registry,coordinator,agent-amd64,agent-arm64,logs}
if [ ! -f "$farm/ca/ca.key" ]; then
  "$bin/archfarm" ca init --dir "$farm/ca"
fi
for agent in amd64-1 arm64-1; do
  [ -f "$farm/ca/$agent.pem" ] || "$bin/archfarm" ca issue-agent "$agent" --dir "$farm/ca"
done

cat >"$farm/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $farm/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$registry_port
YAML
cat >"$farm/coordinator/coordinator.toml" <<TOML
listen = "127.0.0.1:$coordinator_port"
data_dir = "data"
metrics_listen = "127.0.0.1:$status_port"
[tls]
ca_cert = "../ca/ca.pem"
cert = "../ca/coordinator.pem"
key = "../ca/coordinator.key"
client_tokens = "../ca/client-tokens"
ca_key = "../ca/ca.key"
TOML
cat >"$farm/agent-amd64/agent.toml" <<TOML
coordinator = "127.0.0.1:$coordinator_port"
server_name = "localhost"
capacity = 2
cache_dir = "cache"
[tls]
ca_cert = "../ca/ca.pem"
cert = "../ca/amd64-1.pem"
key = "../ca/amd64-1.key"
TOML
cat >"$farm/agent-arm64/agent.toml" <<TOML
coordinator = "127.0.0.1:$coordinator_port"
server_name = "localhost"
capacity = 2
cache_dir = "cache"
# Stand-in for an arm64 host (see scripts/farm-up.sh). Remove on real arm64 hardware.
native_platform = "linux/arm64"
[tls]
ca_cert = "../ca/ca.pem"
cert = "../ca/arm64-1.pem"
key = "../ca/arm64-1.key"
TOML

start() { # name, command...
  local name=$1; shift
  if alive "$name"; then return; fi
  setsid nohup "$@" >"$farm/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$farm/$name.pid"
}

start registry docker-registry serve "$farm/registry/config.yml"
start coordinator "$bin/archfarm" serve --config "$farm/coordinator/coordinator.toml"
start agent-amd64 "$bin/archfarm-agent" --config "$farm/agent-amd64/agent.toml"
start agent-arm64 "$bin/archfarm-agent" --config "$farm/agent-arm64/agent.toml"

cat >"$farm/env" <<ENV
export ARCHFARM_COORDINATOR=127.0.0.1:$coordinator_port
export ARCHFARM_TOKEN=$(cat "$farm/ca/client.token")
export ARCHFARM_CA=$farm/ca/ca.pem
export REGISTRY=127.0.0.1:$registry_port
export ARCHFARM_STATUS_URL=http://127.0.0.1:$status_port
export PATH=$bin:\$PATH
ENV
# shellcheck disable=SC1091
. "$farm/env"

for _ in $(seq 1 100); do
  if curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 \
    && [ "$("$bin/archfarm" agents ls --format json 2>/dev/null | grep -c '"name"')" = 2 ]; then
    "$bin/archfarm" agents ls
    log "registry at $REGISTRY, coordinator at $ARCHFARM_COORDINATOR; logs in $farm/logs"
    log "status page at $ARCHFARM_STATUS_URL/, Prometheus metrics at $ARCHFARM_STATUS_URL/metrics"
    log "agent arm64-1 declares linux/arm64 on $(uname -m) hardware: it stands in for an arm64 host"
    log "use it: . $farm/env"
    exit 0
  fi
  for p in registry coordinator agent-amd64 agent-arm64; do
    alive "$p" || { log "$p exited; its log:"; tail -20 "$farm/logs/$p.log"; exit 1; }
  done
  sleep 0.2
done
log "the farm did not come up within 20 s; logs in $farm/logs"
exit 1
