#!/usr/bin/env bash
# Rewrites the lock files from pyproject.toml's ranges (and the stand-ins' requirements.in):
# the newest versions those ranges allow, for every platform (--universal), with hashes.
#   requirements.lock                            runtime: the Dockerfile installs it
#   requirements-dev.lock                        runtime + dev tools: scripts/setup.sh installs it
#   deploy/compose/dev-images/requirements.lock  the local stand-in images (tests only)
# Run it after changing a dependency, or to take updates; commit the result.
#   bash scripts/lock.sh                  # keep what is locked, add what is missing
#   bash scripts/lock.sh --upgrade        # take the newest versions the ranges allow
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.venv/bin/uv
[ -x "$uv" ] || uv=uv
# uv verifies TLS with its own roots unless told to use the system's (this machine's pip does).
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
common=(--custom-compile-command "bash scripts/lock.sh" --universal --python-version 3.11 --generate-hashes --quiet "$@")
"$uv" pip compile pyproject.toml "${common[@]}" -o requirements.lock
"$uv" pip compile pyproject.toml --extra dev "${common[@]}" -o requirements-dev.lock
"$uv" pip compile deploy/compose/dev-images/requirements.in "${common[@]}" \
    -o deploy/compose/dev-images/requirements.lock
