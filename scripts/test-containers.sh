#!/usr/bin/env bash
# The container test: the project image built from the root Dockerfile, the compose stack of
# deploy/compose up with a generated .env (free loopback ports, random secrets) and the dev
# PKI, and tests/containers/test_stack.py run against it from the host: mTLS carves on the
# original and Fleet paths verified by SHA-256, refusals (no certificate, another CA's), a
# responder login and verified download through the responder listener, the janitor's
# one-shot, `docker stop` of an assembler mid-carve; then `down -v`, checked.
#
#   bash scripts/test-containers.sh         (root; Debian packages docker.io and debootstrap)
#
# Its own dockerd (data under $CARVE_TEST_DOCKER_ROOT, default /var/lib/carve-test-docker:
# images stay cached there between runs) unless one already answers on that socket, or the
# engine at $CARVE_TEST_DOCKER_HOST; it stops what it started. Like any dockerd, it sets up
# its iptables chains (and FORWARD policy DROP), which stay when it stops.
# Base and stand-in images: deploy/compose/dev-images (local tests only).
# Fleet is not part of it (no image here): the stack runs without the fleet profile.
# Everything is cleaned up on success, failure or interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$SECONDS
say() { echo "== containers [$((SECONDS - t0)) s] $*"; }
die() { echo "test-containers: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (it runs its own dockerd)"
for tool in dockerd docker debootstrap openssl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (bash scripts/setup.sh installs docker.io and debootstrap)"
done
[ -x .venv/bin/docker-compose ] || die ".venv/bin/docker-compose is missing: bash scripts/setup.sh"

state=${CARVE_TEST_DOCKER_ROOT:-/var/lib/carve-test-docker}
# CARVE_TEST_DOCKER_HOST: an engine that already runs (e.g. unix:///var/run/docker.sock) instead
# of a dockerd of its own; it must answer.
export DOCKER_HOST=${CARVE_TEST_DOCKER_HOST:-unix://$state/docker.sock}
mkdir -p "$state"
# One run at a time per state directory: a second run would share, then lose, the dockerd.
exec 9>"$state/lock"
flock -w 1800 9 || die "another container test has held $state/lock for 30 minutes"
work=$(mktemp -d /tmp/carve-containers.XXXXXX)
project=carvetest$$
compose=("$root/.venv/bin/docker-compose" -p "$project" -f "$root/deploy/compose/compose.yaml"
         -f "$root/tests/containers/webhook-sink.yaml" --env-file "$work/.env")
started_dockerd=""
stack_up=""

stop_dockerd() {
    local pid
    pid=$(cat "$state/dockerd.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "test-containers: dockerd $pid did not stop in 30 s" >&2
        return 0
    fi
    # dockerd 20.10 leaves its default network namespace mounted under the exec root.
    if mountpoint -q "$state/exec/netns/default" 2>/dev/null; then
        umount "$state/exec/netns/default" || true
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$stack_up" ]; then
        if [ "$rc" -ne 0 ]; then
            echo "---- compose ps and last logs (the test failed) ----" >&2
            "${compose[@]}" ps -a >&2 || true
            # Not OpenBao's: its dev mode prints the root token.
            mapfile -t services < <("${compose[@]}" config --services | grep -vx vault)
            "${compose[@]}" logs --no-color --tail 40 "${services[@]}" >&2 || true
        fi
        "${compose[@]}" down -v --remove-orphans --timeout 45 >/dev/null 2>&1 || true
    fi
    [ -z "$started_dockerd" ] || stop_dockerd
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the engine ------------------------------------------------------------------------------
if [ -n "${CARVE_TEST_DOCKER_HOST:-}" ]; then
    docker version >/dev/null 2>&1 || die "no Docker engine answers on CARVE_TEST_DOCKER_HOST=$DOCKER_HOST"
elif ! docker version >/dev/null 2>&1; then
    say "starting dockerd (data in $state)"
    mkdir -p "$state/data" "$state/exec"
    # --bridge=none: no docker0, nothing to clash with another engine on this machine; builds
    # use the host's network and the stack its own compose networks.
    dockerd --data-root "$state/data" --exec-root "$state/exec" -H "$DOCKER_HOST" \
        --pidfile "$state/dockerd.pid" --bridge=none >"$state/dockerd.log" 2>&1 &
    started_dockerd=1
    for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
    docker version >/dev/null 2>&1 || { tail -20 "$state/dockerd.log" >&2; die "dockerd did not answer in 30 s"; }
fi

# --- images ----------------------------------------------------------------------------------
say "base and stand-in images (deploy/compose/dev-images; cached after the first run)"
bash deploy/compose/dev-images/build.sh 2>"$work/images.log" || { cat "$work/images.log" >&2; exit 1; }
say "project image from the root Dockerfile"
image=carve-test/osquery-carve-server:dev
DOCKER_BUILDKIT=0 docker build -q --network host --build-arg PYTHON_BASE=carve-dev/python:3.11-bookworm \
    -t "$image" . >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

# --- the stack -------------------------------------------------------------------------------
make_pki() {  # DIR: a CA with its server and device certificates
    bash deploy/pki/make-dev-pki.sh "$1" localhost >/dev/null
}
make_pki "$work/pki"
make_pki "$work/other-pki"  # another CA: its device must be refused
# A device of the organisation's CA, revoked before NGINX starts: NGINX loads the CRL at start.
bash deploy/pki/make-dev-pki.sh device lost-laptop "$work/pki" >/dev/null
bash deploy/pki/make-dev-pki.sh revoke lost-laptop "$work/pki" >/dev/null

read -r osquery_port responder_port < <(.venv/bin/python -m devstack free-port 2)
secret() { openssl rand -hex 32; }
responder_password=$(secret)
webhook_secret=whsec_$(openssl rand -base64 32)
cat >"$work/.env" <<ENV
COMPOSE_PROFILES=
CARVE_FLEET_UPSTREAM=127.0.0.1:9
REDIS_PASSWORD=$(secret)
RABBITMQ_PASSWORD=$(secret)
BAO_ROOT_TOKEN=$(secret)
CARVE_TICKET_SECRET=$(secret)
FLEET_MYSQL_PASSWORD=$(secret)
FLEET_MYSQL_ROOT_PASSWORD=$(secret)
FLEET_REDIS_PASSWORD=$(secret)
FLEET_SERVER_PRIVATE_KEY=$(secret)
RESPONDER_USERNAME=responder
RESPONDER_PASSWORD=$responder_password
CARVE_SERVER_NAME=localhost
CARVE_OSQUERY_PORT=127.0.0.1:$osquery_port
CARVE_RESPONDER_PORT=127.0.0.1:$responder_port
CARVE_PKI_DIR=$work/pki
CARVE_MAX_BLOCK_SIZE=2097152
CARVE_BACKEND_SUBNET=172.29.$((RANDOM % 200 + 20)).0/24
CARVE_LOG_LEVEL=INFO
CARVE_WEBHOOK_URL=http://webhook-sink:8090/hook
CARVE_WEBHOOK_SECRET=$webhook_secret
CARVE_IMAGE=$image
NGINX_IMAGE=carve-dev/nginx:standin
REDIS_IMAGE=carve-dev/redis:standin
RABBITMQ_IMAGE=carve-dev/rabbitmq:standin
OPENBAO_IMAGE=carve-dev/openbao:standin
MONGO_IMAGE=carve-dev/mongo:standin
ENV
chmod 0600 "$work/.env"

say "compose up --wait (project $project, without Fleet)"
stack_up=1
"${compose[@]}" up -d --wait --wait-timeout 180 >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
"${compose[@]}" ps -a --format 'table {{.Service}}\t{{.Status}}'
# `up --wait` does not notice a container in a restart loop: every long-running service must
# be running and healthy, every one-shot exited 0.
bad=$("${compose[@]}" ps -a --format '{{.Service}}|{{.State}}|{{.Health}}|{{.ExitCode}}' |
    awk -F'|' '!(($2 == "running" && $3 == "healthy") || ($2 == "exited" && $4 == "0"))' | tr '\n' ' ')
[ -z "$bad" ] || die "not healthy after up --wait (service|state|health|exit code): $bad"

# What the checks need to know about the stack (tests/containers/test_stack.py reads it).
PROJECT=$project WORK=$work OSQUERY_PORT=$osquery_port RESPONDER_PORT=$responder_port \
RESPONDER_PASSWORD=$responder_password WEBHOOK_SECRET=$webhook_secret \
.venv/bin/python - "${compose[@]}" <<'PY'
import json, os, sys
env = os.environ
stack = {
    "project": env["PROJECT"],
    "compose": sys.argv[1:],
    "osquery_url": f"https://127.0.0.1:{env['OSQUERY_PORT']}",
    "responder_url": f"https://127.0.0.1:{env['RESPONDER_PORT']}",
    "pki": f"{env['WORK']}/pki",
    "other_pki": f"{env['WORK']}/other-pki",
    "responder_username": "responder",
    "responder_password": env["RESPONDER_PASSWORD"],
    "workdir": env["WORK"],
    "webhook_secret": env["WEBHOOK_SECRET"],
}
with open(f"{env['WORK']}/stack.json", "w") as out:
    json.dump(stack, out)
PY

say "checks against the stack (tests/containers/test_stack.py)"
CARVE_STACK=$work/stack.json .venv/bin/pytest -o addopts="" -p no:cacheprovider -v -rA \
    --timeout 300 tests/containers/test_stack.py

say "memory and CPU of the stack after the checks (docker stats)"
docker stats --no-stream --format 'table {{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}' \
    $("${compose[@]}" ps -q) | sed "s/^$project-//" || true
say "compose stop, one service at a time (each must stop by itself within its grace period)"
for service in nginx ingest download janitor events assembler webhook-sink vault redis rabbitmq mongo; do
    started=$SECONDS
    "${compose[@]}" stop "$service" >/dev/null 2>&1
    codes=$(docker inspect -f '{{.State.ExitCode}}' $("${compose[@]}" ps -aq "$service") | sort -u | tr '\n' ' ')
    echo "   $service stopped in $((SECONDS - started)) s, exit codes: $codes"
    case "$service:$codes" in
        nginx:* | vault:* | redis:* | rabbitmq:* | mongo:* | webhook-sink:*) ;;  # reported only
        *:"0 ") ;;
        *) die "$service did not stop cleanly (exit codes $codes; 137 is docker's SIGKILL)" ;;
    esac
done
say "compose down -v"
"${compose[@]}" down -v --remove-orphans --timeout 45 >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; exit 1; }
stack_up=""
label=label=com.docker.compose.project=$project
left="$(docker ps -aq --filter "$label")$(docker volume ls -q --filter "$label")$(docker network ls -q --filter "$label")"
[ -z "$left" ] || die "down -v left containers, volumes or networks of $project: $left"
say "PASS: down -v removed every container, volume and network of $project"
