# carve-assembler: seals chunks with a per-carve data key (encryption at rest).
# Creates the carve's Transit key (once), asks it for a data key (once), and unwraps the
# stored data key when another assembler created it, or after a restart. It can neither
# delete, rotate nor reconfigure keys ("+" matches one path segment: keys/<name> only, not
# keys/<name>/config). Give the carves a Transit mount of their own (CARVE_TRANSIT_MOUNT):
# the mount is the boundary these globs rely on; replace "transit" below with its path.
path "transit/keys/+" {
  capabilities = ["create", "update"]
}
path "transit/datakey/plaintext/+" {
  capabilities = ["update"]
}
path "transit/decrypt/+" {
  capabilities = ["update"]
}
