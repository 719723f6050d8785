# The download service's own identity for custody records (CARVE_CUSTODY_KEY, default
# osquery-carve-custody, an ed25519 key of the Transit engine at CARVE_CUSTODY_MOUNT):
# it signs with the key and reads its public versions; it cannot export, rotate or delete it.
#
#   bao secrets enable transit
#   bao write -f transit/keys/osquery-carve-custody type=ed25519
#   bao policy write osquery-carve-custody osquery-carve-custody.hcl
#   bao token create -policy=osquery-carve-custody -period=24h   # CARVE_VAULT_SERVICE_TOKEN
#   (or an AppRole with token_policies=osquery-carve-custody: CARVE_VAULT_ROLE_ID/SECRET_ID)
#
# Rotating (bao write -f transit/keys/osquery-carve-custody/rotate) is an operator's act:
# new records are signed by the new version, old ones still check with the old public key.
path "transit/sign/osquery-carve-custody" {
  capabilities = ["update"]
}
path "transit/sign/osquery-carve-custody/*" {
  capabilities = ["update"]
}
path "transit/keys/osquery-carve-custody" {
  capabilities = ["read"]
}
