# One image for all four services; the command picks the service:
#   docker run IMAGE carve-ingest | carve-assembler | carve-download | carve-janitor [--once]
# It also carries the clients (carvectl, carve-osquery-sim).
#
# Both stages use the same base so the venv's interpreter path is valid in the final
# stage. Pin the digest too in your registry mirror (python:3.11.15-slim-trixie@sha256:...)
# and let a bot (Renovate, Dependabot) bump it: patch releases carry security fixes.
# --build-arg PYTHON_BASE=... swaps it (scripts/test-containers.sh: a local Debian base).
ARG PYTHON_BASE=python:3.11.15-slim-trixie

FROM ${PYTHON_BASE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Every dependency ships manylinux wheels for amd64 and arm64 (aiohttp, uvloop, hiredis,
# orjson, pybase64, zstandard, pydantic-core), so no compiler is installed even here; a
# platform without wheels would need build-essential in this stage, never in the final one.
RUN python -m venv /opt/venv

WORKDIR /src
# The runtime dependencies first, in their own layer, exactly as locked (versions and
# hashes: requirements.lock, made by uv from pyproject.toml's ranges): a source change
# reuses this layer. pip compiles the bytecode here (the final stage cannot: read-only
# root, and PYTHONDONTWRITEBYTECODE).
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

# Then the project, built as a wheel and installed, not in editable mode, without the dev
# extra and without dependencies (all locked above); pip and setuptools then leave the venv,
# unused at run time.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY clients ./clients
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools


FROM ${PYTHON_BASE} AS runtime

LABEL org.opencontainers.image.title="osquery-carve-server" \
      org.opencontainers.image.description="osquery file carving: ingest, assembler, download, janitor" \
      org.opencontainers.image.licenses="Apache-2.0"

# A numeric UID/GID, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 carve \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin carve

# Only the runtime venv comes over from the builder: no source tree, no pip, no build tools.
COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    CARVE_HTTP_HOST=0.0.0.0 \
    CARVE_LOG_JSON=true

USER 10001:10001

# Default ports: ingest, assembler, download, janitor (CARVE_HTTP_PORT overrides).
EXPOSE 8080 8081 8082 8083 8084

# /healthz of whichever service PID 1 is: CARVE_HTTP_PORT, or that service's default port.
# (Kubernetes ignores HEALTHCHECK and uses the manifests' probes.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,re,urllib.request as u; s=re.search(rb'carve-(ingest|assembler|download|janitor|events)',open('/proc/1/cmdline','rb').read()); p=os.environ.get('CARVE_HTTP_PORT') or {b'ingest':8080,b'assembler':8081,b'download':8082,b'janitor':8083,b'events':8084}[s[1]]; u.urlopen(f'http://127.0.0.1:{p}/healthz',timeout=4)"]

CMD ["carve-ingest"]
