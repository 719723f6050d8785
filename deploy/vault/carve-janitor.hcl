# carve-janitor: finalizes carves an assembler left (unwrap), destroys the key of every
# deleted or expired carve (crypto-shredding: allow deletion, then delete), and runs the
# operator's commands: `carve-janitor rewrap` (rotate, rewrap) and `carve-janitor encrypt`
# (a key and a data key for a carve stored in the clear).
path "transit/keys/+" {
  capabilities = ["create", "update", "delete"]
}
path "transit/keys/+/config" {
  capabilities = ["update"]
}
path "transit/keys/+/rotate" {
  capabilities = ["update"]
}
path "transit/datakey/plaintext/+" {
  capabilities = ["update"]
}
path "transit/decrypt/+" {
  capabilities = ["update"]
}
path "transit/rewrap/+" {
  capabilities = ["update"]
}
