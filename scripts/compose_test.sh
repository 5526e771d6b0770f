#!/usr/bin/env bash
# `make compose-test`: runs docker-compose.yml for real under podman (no Docker
# engine and no Docker Hub here) and tests the cluster through its published
# ports: tests/compose_cluster. Installs the container engine when missing;
# the images and the run are the tests' (devcluster/container_engine.py).
set -euo pipefail
cd "$(dirname "$0")/.."

# podman with runc and netavark (aardvark-dns: container names resolve on
# compose's network), debootstrap for the stand-in base images' root file
# system, Debian's docker-compose 1.29 to drive podman's Docker API.
missing=()
for tool in podman runc debootstrap docker-compose /usr/lib/podman/netavark /usr/lib/podman/aardvark-dns; do
  command -v "$tool" >/dev/null || [ -x "$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "compose-test: installing the container engine (missing: ${missing[*]})" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc netavark aardvark-dns debootstrap docker-compose \
    >/dev/null
fi

export CONTAINERS_CONF="$PWD/containers/containers.conf"
status=0
REWARDS_COMPOSE_TEST=1 .venv/bin/python -m pytest tests/compose_cluster -p no:cacheprovider "$@" || status=$?
if [ -f .local/compose-test/figures.json ]; then
  echo "compose-test: figures of this run (.local/compose-test/figures.json):"
  cat .local/compose-test/figures.json
fi
exit "$status"
