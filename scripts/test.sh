#!/usr/bin/env bash
# The test command: lint, type-check, then the whole suite against real
# Redis, RabbitMQ and SecantusDB servers that the tests start themselves, then the
# container test (scripts/test-containers.sh: the image and the compose stack).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
# Coverage (pyproject [tool.coverage]); the whole suite fails under 85 % (CONTRIBUTING.md),
# a run of some tests (extra arguments) is not held to it.
floor=(--cov-fail-under=85); [ $# -gt 0 ] && floor=(--cov-fail-under=0)
echo "== pytest (with coverage)"; pytest --cov --cov-report=term:skip-covered "${floor[@]}" "$@"
# The images and the compose stack for real (root, docker.io, debootstrap; CONTRIBUTING.md
# "The container test"). CARVE_CONTAINERS=0 leaves it out, and says so.
if [ "${CARVE_CONTAINERS:-1}" = 0 ]; then
  echo "== containers: NOT RUN (CARVE_CONTAINERS=0)"
else
  echo "== containers"; bash scripts/test-containers.sh
fi
