#!/bin/sh
# vault-init: what an operator does once on a fresh Vault/OpenBao for the carve server.
#   - writes the download policy (CARVE_VAULT_POLICY) and the admin policy
#     (CARVE_VAULT_ADMIN_POLICY) from deploy/vault/;
#   - creates Transit's ed25519 custody signing key and gives its policy to the download
#     service's AppRole (custody records);
#   - enables the userpass auth method (carvectl login --username ...) without Vault's user
#     lockout, which would let anyone lock a responder out with five wrong passwords (the
#     download service's login limits and NGINX's per-address limit bound guessing instead);
#   - when RESPONDER_PASSWORD is set, creates the userpass login RESPONDER_USERNAME
#     (default: responder) holding the download policy.
# Safe to run again; run it again whenever the dev-mode server restarted (dev mode keeps
# everything in memory). Needs BAO_ADDR and BAO_TOKEN (a token allowed to write policies and
# auth methods: the dev root token in the compose example). POLICY_DIR holds the .hcl files.
set -eu

: "${BAO_ADDR:?BAO_ADDR is not set}"
: "${BAO_TOKEN:?BAO_TOKEN is not set}"
POLICY_DIR=${POLICY_DIR:-/policies}
READ_POLICY=osquery-file-carve-file-requests
ADMIN_POLICY=osquery-file-carve-admin

tries=0
until bao status >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "vault-init: $BAO_ADDR is not unsealed and answering after 30 s" >&2
        exit 1
    fi
    sleep 1
done

bao policy write "$READ_POLICY" "$POLICY_DIR/$READ_POLICY.hcl" >/dev/null
bao policy write "$ADMIN_POLICY" "$POLICY_DIR/$ADMIN_POLICY.hcl" >/dev/null
echo "vault-init: policies $READ_POLICY and $ADMIN_POLICY written"

if ! bao auth list -format=json | grep -q '"userpass/"'; then
    bao auth enable userpass >/dev/null
    echo "vault-init: userpass enabled"
fi
bao auth tune -user-lockout-disable=true userpass/ >/dev/null

if [ -n "${RESPONDER_PASSWORD:-}" ]; then
    user=${RESPONDER_USERNAME:-responder}
    # The password goes through stdin ("-"), never on a command line.
    printf '%s' "$RESPONDER_PASSWORD" |
        bao write "auth/userpass/users/$user" password=- token_policies="$READ_POLICY" >/dev/null
    echo "vault-init: userpass login '$user' holds $READ_POLICY"
fi

# Encryption at rest (docs/security.md): the Transit engine, and for each service that
# touches carve keys its own AppRole with its own policy (deploy/vault/carve-*.hcl). The
# role id is the role's name (not a secret); a new secret id is written to /approle/<service>/
# (a volume only that service mounts) on every run.
TRANSIT=${TRANSIT_MOUNT:-transit}
if ! bao secrets list -format=json | grep -q "\"$TRANSIT/\""; then
    bao secrets enable -path="$TRANSIT" transit >/dev/null
    echo "vault-init: transit enabled at $TRANSIT/"
fi
if ! bao auth list -format=json | grep -q '"approle/"'; then
    bao auth enable approle >/dev/null
    echo "vault-init: approle enabled"
fi
# Custody records (docs/security.md): Transit's ed25519 signing key; its policy goes to the
# download service's role below, beside carve-reader.
CUSTODY_KEY=osquery-carve-custody
bao read "$TRANSIT/keys/$CUSTODY_KEY" >/dev/null 2>&1 ||
    bao write -f "$TRANSIT/keys/$CUSTODY_KEY" type=ed25519 >/dev/null
sed "s#transit/#$TRANSIT/#" "$POLICY_DIR/osquery-carve-custody.hcl" |
    bao policy write osquery-carve-custody - >/dev/null
echo "vault-init: custody signing key $TRANSIT/keys/$CUSTODY_KEY and its policy ready"
for pair in assembler:carve-assembler download:carve-reader triage:carve-reader janitor:carve-janitor; do
    service=${pair%%:*}
    policy=${pair#*:}
    sed "s#transit/#$TRANSIT/#" "$POLICY_DIR/$policy.hcl" | bao policy write "$policy" - >/dev/null
    role="carve-$service"
    policies=$policy
    [ "$service" = download ] && policies="$policy,osquery-carve-custody"  # it signs records
    bao write "auth/approle/role/$role" token_policies="$policies" token_ttl=1h token_max_ttl=4h \
        >/dev/null
    bao write "auth/approle/role/$role/role-id" role_id="$role" >/dev/null
    if [ -d "/approle/$service" ]; then
        umask 077
        bao write -f -field=secret_id "auth/approle/role/$role/secret-id" \
            >"/approle/$service/secret-id"
        chmod 0444 "/approle/$service/secret-id"  # read by the service's own user
    fi
    echo "vault-init: approle $role holds $policies"
done
