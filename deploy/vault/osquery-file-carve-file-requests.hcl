# Responders who may list and download osquery carves.
#
# The download service only checks that a token carries this policy (by name,
# in its own policies or through an identity group); the policy itself need not
# grant any Vault path. Name it in CARVE_VAULT_POLICY if you rename it.
#
#   bao policy write osquery-file-carve-file-requests osquery-file-carve-file-requests.hcl
#   bao write auth/userpass/users/alice password=... token_policies=osquery-file-carve-file-requests
#
# Lets a responder see their own token, which carvectl login uses to show who is logged in.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
