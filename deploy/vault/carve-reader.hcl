# carve-download and carve-triage: unwrap a carve's data key to read its chunks. Nothing
# else: no key is created, rotated or destroyed by a service that serves or scans carves.
path "transit/decrypt/+" {
  capabilities = ["update"]
}
