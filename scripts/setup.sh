#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: system packages
# (Redis, RabbitMQ, OpenSSL, NGINX, Docker's engine, debootstrap, Chromium, wrk) where missing, and the
# project with its dev tools in .venv, exactly as requirements-dev.lock pins them (versions
# and hashes; scripts/lock.sh rewrites it). Safe to run again: it skips what is already there,
# and reinstalls only when pyproject.toml or the lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/sbin/nginx ] || need+=(nginx)  # tests/integration/test_nginx.py runs the repo's config
# scripts/test-containers.sh: its own dockerd, and a Debian base image made locally.
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -x /usr/bin/chromium ] || need+=(chromium)  # tests/browser drive the console with Playwright
command -v wrk >/dev/null 2>&1 || need+=(wrk)  # bench.wrk_blocks (its quick run is in the suite)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # promtool checks deploy/observability
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
  # The packages start their own services; the scripts manage the ones they need.
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements-dev.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Every dependency from the lock (pip refuses anything unpinned or with another hash),
  # then the project itself, editable, without resolving anything again.
  .venv/bin/python -m pip install -q --require-hashes -r requirements-dev.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  .venv/bin/python -m pip check >/dev/null
  rm -f .venv/.installed-*
  touch "$stamp"
fi
