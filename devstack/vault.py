"""Setting up the real OpenBao dev server the way an operator would for responders."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions

from devstack import ROOT
from devstack.servers import BaoServer

POLICY = "osquery-file-carve-file-requests"
POLICY_FILE = ROOT / "deploy" / "vault" / f"{POLICY}.hcl"
CUSTODY_POLICY = "osquery-carve-custody"
CUSTODY_KEY = "osquery-carve-custody"


def enable_transit(client: hvac.Client, mount: str = "transit") -> None:
    """Vault's Transit secrets engine at ``mount`` (idempotent, and safe when two callers
    race: encryption at rest and custody records both need it)."""
    if f"{mount}/" in client.sys.list_mounted_secrets_engines()["data"]:
        return
    try:
        client.sys.enable_secrets_engine("transit", path=mount)
    except hvac.exceptions.InvalidRequest:
        if f"{mount}/" not in client.sys.list_mounted_secrets_engines()["data"]:
            raise


def ensure_signing_key(client: hvac.Client, name: str, mount: str = "transit") -> None:
    """An ed25519 Transit key ``name`` (created if missing; an existing one is kept)."""
    enable_transit(client, mount)
    try:
        client.secrets.transit.read_key(name, mount_point=mount)
    except hvac.exceptions.InvalidPath:
        client.secrets.transit.create_key(name, key_type="ed25519", mount_point=mount)


@dataclass
class Token:
    token: str
    accessor: str


class VaultAdmin:
    """Root access to a dev server: policies, tokens, userpass users, identity groups."""

    def __init__(self, url: str, root_token: str) -> None:
        self.url = url
        self.client = hvac.Client(url=url, token=root_token)

    @classmethod
    def provisioned(cls, server: BaoServer) -> VaultAdmin:
        """Root access to ``server``, with the download policy and userpass set up."""
        admin = cls(server.url, server.root_token)
        admin.provision()
        return admin

    def provision(self) -> None:
        """The repository's own policy file, and userpass enabled without Vault's user lockout
        (idempotent)."""
        self.client.sys.create_or_update_policy(POLICY, POLICY_FILE.read_text())
        if "userpass/" not in self.client.sys.list_auth_methods()["data"]:
            self.client.sys.enable_auth_method("userpass")
        # Vault's own user lockout (5 failures, 15 minutes, whoever sent them) would let anyone
        # lock a responder out: the download service's login limits bound guessing instead.
        self.client.write_data(
            "sys/auth/userpass/tune", data={"user_lockout_config": {"lockout_disable": True}}
        )

    def custody_role(self, key: str = CUSTODY_KEY) -> dict[str, str]:
        """The settings of an AppRole that signs with the custody key ``key`` (created if
        missing) and nothing else: ``{"vault_role_id", "vault_secret_id"}``."""
        ensure_signing_key(self.client, key)
        if "approle/" not in self.client.sys.list_auth_methods()["data"]:
            with contextlib.suppress(hvac.exceptions.InvalidRequest):  # raced: enabled
                self.client.sys.enable_auth_method("approle")
        policy = (ROOT / "deploy" / "vault" / f"{CUSTODY_POLICY}.hcl").read_text()
        name = f"{CUSTODY_POLICY}-{key}"
        self.client.sys.create_or_update_policy(name, policy.replace(CUSTODY_KEY, key))
        approle = self.client.auth.approle
        approle.create_or_update_approle(name, token_policies=[name], token_ttl="1h")
        return {
            "vault_role_id": approle.read_role_id(name)["data"]["role_id"],
            "vault_secret_id": approle.generate_secret_id(name)["data"]["secret_id"],
        }

    def token(self, *policies: str, ttl: str = "1h") -> Token:
        # Every token also gets Vault's "default" policy (which allows lookup-self).
        auth: dict[str, Any] = self.client.auth.token.create(policies=list(policies), ttl=ttl)[
            "auth"
        ]
        return Token(auth["client_token"], auth["accessor"])

    def revoke(self, token: str) -> None:
        self.client.auth.token.revoke(token)

    def user_in_group(self, username: str, password: str, group: str, *policies: str) -> Token:
        """A userpass user holding ``policies`` only through an identity group."""
        self.client.auth.userpass.create_or_update_user(username, password, policies=[])
        login = hvac.Client(url=self.url).auth.userpass.login(username, password)["auth"]
        self.client.secrets.identity.create_or_update_group(
            group, policies=list(policies), member_entity_ids=[login["entity_id"]]
        )
        return Token(login["client_token"], login["accessor"])


# Each service's own Vault identity for Transit (an AppRole) and its policy file.
SERVICE_POLICIES = {
    "assembler": "carve-assembler",
    "download": "carve-reader",
    "triage": "carve-reader",
    "janitor": "carve-janitor",
}


def provision_transit(client: hvac.Client, mount: str = "transit") -> dict[str, dict[str, str]]:
    """Transit and AppRole enabled, the services' policies written, and for each service
    its role: ``{service: {"CARVE_VAULT_ROLE_ID": ..., "CARVE_VAULT_SECRET_ID": ...}}``
    (idempotent: a new secret id each time)."""
    enable_transit(client, mount)
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    # Custody records: the ed25519 signing key, whose policy the download service also holds.
    ensure_signing_key(client, CUSTODY_KEY, mount)
    custody = (ROOT / "deploy" / "vault" / f"{CUSTODY_POLICY}.hcl").read_text()
    client.sys.create_or_update_policy(CUSTODY_POLICY, custody.replace("transit/", f"{mount}/"))
    roles: dict[str, dict[str, str]] = {}
    for service, policy in SERVICE_POLICIES.items():
        text = (ROOT / "deploy" / "vault" / f"{policy}.hcl").read_text()
        client.sys.create_or_update_policy(policy, text.replace("transit/", f"{mount}/"))
        role = f"carve-{service}"
        extra = [CUSTODY_POLICY] if service == "download" else []
        client.auth.approle.create_or_update_approle(
            role, token_policies=[policy, *extra], token_ttl="1h", token_max_ttl="4h"
        )
        # The role id names the role (it is not a secret; the secret id is).
        client.write_data(f"auth/approle/role/{role}/role-id", data={"role_id": role})
        role_id = client.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        roles[service] = {"CARVE_VAULT_ROLE_ID": role_id, "CARVE_VAULT_SECRET_ID": secret_id}
    return roles
