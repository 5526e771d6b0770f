#!/usr/bin/env bash
# The one command that generates the Python code and .pyi stubs for protos/.
# Usage: scripts/gen_protos.sh [OUTPUT_DIR]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
py=${PYTHON:-.venv/bin/python}
export PATH="$(cd "$(dirname "$py")" && pwd):$PATH"
mkdir -p "$out"
rm -rf "$out/rewards"
"$py" -m grpc_tools.protoc -I protos \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  $(find protos -name '*.proto' | sort)
for pkg in "$out/rewards" "$out/rewards/v1"; do
  echo '"""Generated from protos/ by scripts/gen_protos.sh; do not edit."""' > "$pkg/__init__.py"
done
