# Custody records (CARVE_CUSTODY_KEY, default osquery-carve-custody, an ed25519 key of the
# Transit engine at CARVE_CUSTODY_MOUNT): held by the download service's role beside
# carve-reader; it signs with the key and reads its public versions; it cannot export,
# rotate or delete it.
#
#   bao write -f transit/keys/osquery-carve-custody type=ed25519
#   bao policy write osquery-carve-custody osquery-carve-custody.hcl
#   bao write auth/approle/role/carve-download token_policies=carve-reader,osquery-carve-custody
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
