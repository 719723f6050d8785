#!/usr/bin/env bash
# The run command: starts the whole stack on loopback and keeps it in the
# foreground until Ctrl-C.
#   backends  Redis :6379, RabbitMQ :5672, SecantusDB (MongoDB wire) :27017,
#             OpenBao :8200 (data, unseal key and root token in .run/openbao: local
#             development only) -- each started only if its port is closed
#   services  carve-ingest :8080, carve-assembler :8081, carve-download :8082,
#             carve-janitor :8083 (sweeps every 5 minutes), carve-events :8084 (webhooks:
#             set CARVE_WEBHOOK_URL and CARVE_WEBHOOK_SECRET, or CARVE_WEBHOOKS_FILE),
#             carve-triage :8085 (rules and hash sets: deploy/compose/triage, or set
#             CARVE_TRIAGE_RULES and CARVE_TRIAGE_HASHSETS)
#   OpenBao   the download and admin policies, and two userpass logins (local use only):
#             "responder" (download) and "admin" (download, delete, audit)
# Logs and data live under .run/. Backends this script started are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
RUN="$PWD/.run"; mkdir -p "$RUN/logs"
started=()
backends_started=()  # for the banner: which backends this script started, which it reused
backends_reused=()

port_open() { python -m devstack port-open "$1"; }
wait_port() {  # port seconds name
  python -m devstack wait-port "$1" --timeout "$2" --name "run: $3" --log "$RUN/logs/$3.log" || exit 1
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

if port_open 6379; then backends_reused+=("Redis :6379"); else
  backends_started+=("Redis :6379")
  echo "run: starting Redis on 6379"
  mkdir -p "$RUN/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$RUN/redis" \
    --appendonly yes --logfile "$RUN/logs/redis.log"
  REDIS_STARTED=1; wait_port 6379 10 redis
fi
if port_open 5672; then backends_reused+=("RabbitMQ :5672"); else
  backends_started+=("RabbitMQ :5672")
  echo "run: starting RabbitMQ on 5672 (takes a few seconds)"
  rabbitmq-server -detached >"$RUN/logs/rabbitmq.log" 2>&1
  RABBIT_STARTED=1; wait_port 5672 90 rabbitmq
fi
if port_open 27017; then backends_reused+=("MongoDB :27017"); else
  backends_started+=("SecantusDB :27017")
  echo "run: starting SecantusDB on 27017 (data in $RUN/mongo)"
  background secantus python -m secantus --host 127.0.0.1 --port 27017 \
    --storage-path "$RUN/mongo" --log-level WARNING
  wait_port 27017 30 secantus
fi
# OpenBao keeps its data in .run/openbao, so the Transit keys of the carves in .run/mongo
# survive a restart. Its unseal key and root token are saved next to it (0700 directory,
# 0600 files) so that each start unseals it: a local development convenience, never a way
# to run Vault in production.
BAO_DIR="$RUN/openbao"
if port_open 8200; then backends_reused+=("OpenBao :8200"); else
  backends_started+=("OpenBao :8200")
  echo "run: starting OpenBao on 8200 (data in $BAO_DIR/data)"
  mkdir -p "$BAO_DIR" && chmod 700 "$BAO_DIR"
  config=$(python -m devstack bao-config "$BAO_DIR" --port 8200)  # Raft's port: 8201
  background openbao env HOME="$RUN" bao server -config="$config"
  wait_port 8200 30 openbao
  BAO_ADDR=http://127.0.0.1:8200 python -m devstack bao-unseal "$BAO_DIR" --init || {
    echo "run: could not initialize or unseal the OpenBao on 8200; see $RUN/logs/openbao.log" >&2
    exit 1
  }
  BAO_STARTED=1
fi
# The responder side, as an operator would set it up: the policies the download service
# checks, and userpass logins holding them (local development credentials only). The root
# token: the saved one for the OpenBao started here; for one already running,
# RUN_VAULT_ROOT_TOKEN (default "root", a dev server's).
if [ -n "${BAO_STARTED:-}" ]; then root_token=$(cat "$BAO_DIR/secrets/root-token"); else
  root_token="${RUN_VAULT_ROOT_TOKEN:-root}"
fi
export BAO_ADDR=http://127.0.0.1:8200 BAO_TOKEN="$root_token"
POLICY=osquery-file-carve-file-requests
ADMIN=osquery-file-carve-admin
if bao policy write "$POLICY" "deploy/vault/$POLICY.hcl" >"$RUN/logs/vault-setup.log" 2>&1 &&
  bao policy write "$ADMIN" "deploy/vault/$ADMIN.hcl" >>"$RUN/logs/vault-setup.log" 2>&1; then
  # Not a pipe into grep -q: under pipefail, bao killed by SIGPIPE would fail the test.
  auths=$(bao auth list -format=json)
  grep -q '"userpass/"' <<<"$auths" || bao auth enable userpass >/dev/null
  bao write auth/userpass/users/responder password=responder token_policies="$POLICY" >/dev/null
  bao write auth/userpass/users/admin password=admin token_policies="$POLICY,$ADMIN" >/dev/null
else
  echo "run: could not set up the OpenBao on 8200 (if it was already running: is its root" \
    "token '${RUN_VAULT_ROOT_TOKEN:-root}'? set RUN_VAULT_ROOT_TOKEN);" \
    "see $RUN/logs/vault-setup.log" >&2
fi
# Encryption at rest (docs/security.md): Transit, and each service that touches carve keys
# signed in with its own AppRole and policy (deploy/vault/carve-*.hcl). The secret ids go to
# files only this user can read. The keys are kept in .run/openbao: remove it and every carve
# sealed before can no longer be read (410 "shredded"), like carves whose key was shredded.
export CARVE_ENCRYPTION="${CARVE_ENCRYPTION:-vault-transit}"
mkdir -p "$RUN/vault" && chmod 700 "$RUN/vault"
if python -m devstack transit-roles "$RUN/vault" >>"$RUN/logs/vault-setup.log" 2>&1; then
  role_env() {  # service: its CARVE_VAULT_ROLE_ID and CARVE_VAULT_SECRET_ID_FILE
    echo "CARVE_VAULT_ROLE_ID=carve-$1" "CARVE_VAULT_SECRET_ID_FILE=$RUN/vault/$1.secret-id"
  }
else
  echo "run: could not set up Transit and AppRole on the OpenBao on 8200; encryption at" \
    "rest is off (see $RUN/logs/vault-setup.log)" >&2
  export CARVE_ENCRYPTION=none
  role_env() { echo "CARVE_ENCRYPTION=none"; }
fi
unset BAO_TOKEN root_token

background ingest carve-ingest
# shellcheck disable=SC2046  # role_env prints VAR=value words on purpose
background assembler env CARVE_HTTP_PORT=8081 $(role_env assembler) carve-assembler
# shellcheck disable=SC2046
background download env $(role_env download) carve-download
# shellcheck disable=SC2046
background janitor env CARVE_HTTP_PORT=8083 $(role_env janitor) carve-janitor
background events env CARVE_HTTP_PORT=8084 CARVE_CONSOLE_URL="${CARVE_CONSOLE_URL:-http://127.0.0.1:8082/ui/}" carve-events
wait_port 8080 30 ingest
wait_port 8081 30 assembler
wait_port 8082 30 download
wait_port 8083 30 janitor
# shellcheck disable=SC2046
background triage env CARVE_HTTP_PORT=8085 $(role_env triage) \
  CARVE_TRIAGE_RULES="${CARVE_TRIAGE_RULES:-$PWD/deploy/compose/triage/rules}" \
  CARVE_TRIAGE_HASHSETS="${CARVE_TRIAGE_HASHSETS:-$PWD/deploy/compose/triage/hashsets}" carve-triage
wait_port 8084 30 events
wait_port 8085 30 triage

bao_note="already running, left as it was: its keys last as long as it keeps them"
if [ -n "${BAO_STARTED:-}" ]; then
  bao_note="its data, the carves' keys too, kept across restarts in .run/openbao; its unseal
             key and root token in .run/openbao/secrets, to unseal it on each start: a local
             development convenience, never for production (without .run/openbao: 410)"
fi
list() { if [ $# -gt 0 ]; then local IFS=","; echo "$*" | sed 's/,/, /g'; else echo "none"; fi; }
cat <<MSG

The carve server runs on loopback:
  console    http://127.0.0.1:8082/ui/   <- open this in a browser
             logins (local use only): responder / responder   admin / admin (delete, audit)
  ingest     http://127.0.0.1:8080  (osquery: /start_uploads, /upload_blocks; Fleet paths too)
  assembler  http://127.0.0.1:8081  (/healthz, /readyz, /metrics)
  download   http://127.0.0.1:8082  (the console, and the API: /api/v1/carves, docs/api.md)
  janitor    http://127.0.0.1:8083  (/metrics; one sweep now: .venv/bin/carve-janitor --once)
  events     http://127.0.0.1:8084  (carve events to webhooks: docs/events.md)
  triage     http://127.0.0.1:8085  (scans on arrival: docs/triage.md)
  OpenBao    http://127.0.0.1:8200  (its CLI: .venv/bin/bao)
             $bao_note
  at rest    CARVE_ENCRYPTION=$CARVE_ENCRYPTION (Transit key per carve; docs/security.md)
  backends   started: $(list "${backends_started[@]}")
             reused (already running, left as they were): $(list "${backends_reused[@]}")
  logs       $RUN/logs/

Carve a real file the way an osquery 5.23 host does, then fetch it as a responder:
  .venv/bin/carve-osquery-sim --url http://127.0.0.1:8080 --file /etc/os-release
  .venv/bin/carvectl login --username responder        # password: responder
  .venv/bin/carvectl list
  .venv/bin/carvectl show <ID>                         # the first characters of the id will do
  .venv/bin/carvectl files <ID>
  .venv/bin/carvectl get <ID>                          # verified against the server's SHA-256
  .venv/bin/carvectl extract <ID> -d ./evidence

Load: 10 hosts at once, 5 MB each, 8 KiB blocks:
  .venv/bin/carve-osquery-sim --url http://127.0.0.1:8080 --hosts 10 --size 5MB --block-size 8KiB

Stop with Ctrl-C.
MSG
wait
