#!/usr/bin/env bash
# The README's first command: brings up the local farm (scripts/farm-up.sh), builds
# examples/hello for linux/amd64 and linux/arm64 on two agents, pushes it, and prints the
# published index with its platforms (and their provenance attestations).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/farm-up.sh"
# shellcheck disable=SC1091
. "$root/.farm/env"
tag="$REGISTRY/hello:latest"
echo
echo "== archfarm build --platform linux/amd64,linux/arm64 -t $tag --push examples/hello"
archfarm build --platform linux/amd64,linux/arm64 -t "$tag" --push --progress plain \
  --metadata-file "$root/.farm/hello-metadata.json" "$root/examples/hello"
echo
echo "== archfarm imagetools inspect $tag"
archfarm imagetools inspect "$tag"
echo "== docker run --rm $tag   (the amd64 child, natively)"
docker run --rm "$tag"
echo
echo "The status page is at $ARCHFARM_STATUS_URL/ (Prometheus metrics at $ARCHFARM_STATUS_URL/metrics)."
echo "The farm is still running: '. .farm/env' to use it, 'scripts/farm-down.sh' to stop it."
