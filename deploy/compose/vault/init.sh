#!/bin/sh
# vault-init: what an operator does once on a fresh Vault/OpenBao for the carve server.
#   - writes the download policy (CARVE_VAULT_POLICY) and the admin policy
#     (CARVE_VAULT_ADMIN_POLICY) from deploy/vault/;
#   - enables Transit with the ed25519 custody signing key, and writes its policy;
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

# Custody records (docs/security.md): Transit's ed25519 signing key and the policy of the
# identity that signs with it (give it to the download service's token or AppRole).
CUSTODY_KEY=${CARVE_CUSTODY_KEY:-osquery-carve-custody}
bao secrets list -format=json | grep -q '"transit/"' || bao secrets enable transit >/dev/null
bao read "transit/keys/$CUSTODY_KEY" >/dev/null 2>&1 ||
    bao write -f "transit/keys/$CUSTODY_KEY" type=ed25519 >/dev/null
bao policy write osquery-carve-custody "$POLICY_DIR/osquery-carve-custody.hcl" >/dev/null
echo "vault-init: custody signing key transit/keys/$CUSTODY_KEY and its policy ready"

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
