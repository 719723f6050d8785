#!/usr/bin/env bash
# The test command: lint, type-check, then the whole suite against real
# Redis, RabbitMQ and SecantusDB servers that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== pytest"; pytest "$@"
