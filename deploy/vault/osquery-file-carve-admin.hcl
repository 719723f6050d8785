# Administrators who may DELETE carves (CARVE_VAULT_ADMIN_POLICY). Deleting
# takes this policy in addition to osquery-file-carve-file-requests: give it
# to few people. Like the read policy, it is checked by name and grants no
# Vault path beyond what carvectl needs.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
