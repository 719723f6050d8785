#!/usr/bin/env bash
# The run command: starts the whole stack on loopback and keeps it in the
# foreground until Ctrl-C.
#   backends  Redis :6379, RabbitMQ :5672, SecantusDB (MongoDB wire) :27017,
#             OpenBao dev :8200 -- each started only if its port is closed
#   services  carve-ingest :8080, carve-assembler :8081
# Logs and data live under .run/. Backends this script started are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
RUN="$PWD/.run"; mkdir -p "$RUN/logs"
started=()

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # port seconds name
  for _ in $(seq 1 $(($2 * 10))); do port_open "$1" && return 0; sleep 0.1; done
  echo "run: $3 did not open port $1; see $RUN/logs/$3.log" >&2; exit 1
}
background() {  # name command...
  local name=$1; shift
  nohup "$@" >"$RUN/logs/$name.log" 2>&1 &
  started+=("$!")
}
cleanup() {
  trap - EXIT INT TERM
  echo; echo "run: stopping ${#started[@]} processes"
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${RABBIT_STARTED:-}" ]; then rabbitmqctl stop >/dev/null 2>&1 || true; fi
  if [ -n "${REDIS_STARTED:-}" ]; then redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT INT TERM

if ! port_open 6379; then
  echo "run: starting Redis on 6379"
  mkdir -p "$RUN/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$RUN/redis" \
    --appendonly yes --logfile "$RUN/logs/redis.log"
  REDIS_STARTED=1; wait_port 6379 10 redis
fi
if ! port_open 5672; then
  echo "run: starting RabbitMQ on 5672 (takes a few seconds)"
  rabbitmq-server -detached >"$RUN/logs/rabbitmq.log" 2>&1
  RABBIT_STARTED=1; wait_port 5672 90 rabbitmq
fi
if ! port_open 27017; then
  echo "run: starting SecantusDB on 27017 (data in $RUN/mongo)"
  background secantus python -m secantus --host 127.0.0.1 --port 27017 \
    --storage-path "$RUN/mongo" --log-level WARNING
  wait_port 27017 30 secantus
fi
if ! port_open 8200; then
  echo "run: starting OpenBao dev server on 8200 (root token: root)"
  background openbao bao server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:8200
  wait_port 8200 30 openbao
fi

background ingest carve-ingest
background assembler env CARVE_HTTP_PORT=8081 carve-assembler
wait_port 8080 30 ingest
wait_port 8081 30 assembler

cat <<MSG

The carve server runs on loopback:
  ingest     http://127.0.0.1:8080  (osquery: /start_uploads, /upload_blocks; Fleet paths too)
  assembler  http://127.0.0.1:8081  (/healthz, /readyz, /metrics)
  logs       $RUN/logs/

Carve like 10 osquery 5.23 hosts at once (5 MB each, 8 KiB blocks):
  .venv/bin/carve-osquery-sim --url http://127.0.0.1:8080 --hosts 10 --size 5MB --block-size 8KiB

Stop with Ctrl-C.
MSG
wait
