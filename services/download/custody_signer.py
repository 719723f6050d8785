"""Signing custody records with a Vault Transit ed25519 key, as the download service itself.

The service signs with its own Vault identity, never a responder's token: the same AppRole
(or Kubernetes) identity, and the same login and token, it unwraps carve keys with (the key
ring's ``shared.crypto.transit.Transit``: one login per process, not one per use; settings
``CARVE_VAULT_AUTH``, ``CARVE_VAULT_ROLE_ID``, ``CARVE_VAULT_SECRET_ID[_FILE]``...), whose
role also holds ``deploy/vault/osquery-carve-custody.hcl``: ``update`` on
``transit/sign/<key>`` and ``read`` on ``transit/keys/<key>``, nothing else on that key. The
private key never leaves Vault; a rotated key keeps its old versions, whose public keys
still check old records.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import hvac.exceptions

from services.download.settings import DownloadSettings
from shared.crypto.transit import Transit
from shared.errors import Unavailable


@dataclass(frozen=True)
class PublicKey:
    version: int
    public_key: str  # base64 of the raw 32-byte ed25519 key, as Vault gives it
    created: str


class TransitSigner:
    """Signs bytes with ``transit/sign/<key>`` and reads the key's public versions, through
    the key ring's ``Transit`` (None when the service has no Vault identity)."""

    def __init__(self, transit: Transit | None, settings: DownloadSettings) -> None:
        self._transit = transit
        self.key = settings.custody_key
        self._custody_mount = settings.custody_mount

    def _signed_in(self) -> Transit:
        if self._transit is None:
            raise Unavailable("vault", "no service identity (CARVE_VAULT_ROLE_ID) to sign with")
        return self._transit

    def _sign(self, data: bytes, version: int) -> str:
        try:
            answer = self._signed_in().call("sign", lambda c: c.secrets.transit.sign_data(
                self.key, hash_input=base64.b64encode(data).decode(), key_version=version,
                mount_point=self._custody_mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest as exc:
            raise Unavailable("vault", f"Transit refused to sign: {exc}") from exc
        signature = str(answer["data"]["signature"])  # vault:v<N>:<base64>
        prefix = f"vault:v{version}:"
        if not signature.startswith(prefix):
            raise Unavailable("vault", "Transit signed with another key version")
        return signature.removeprefix(prefix)

    def _keys(self) -> tuple[int, list[PublicKey]]:
        try:
            answer = self._signed_in().call("read", lambda c: c.secrets.transit.read_key(
                self.key, mount_point=self._custody_mount))  # fmt: skip
        except hvac.exceptions.InvalidRequest as exc:
            raise Unavailable("vault", f"the custody key cannot be read: {exc}") from exc
        data = answer["data"]
        if data.get("type") != "ed25519":
            raise Unavailable("vault", f"the custody key {self.key} is not an ed25519 key")
        keys = [
            PublicKey(int(v), str(k["public_key"]), str(k.get("creation_time") or ""))
            for v, k in data["keys"].items()
            if k.get("public_key")
        ]
        return int(data["latest_version"]), sorted(keys, key=lambda k: k.version)

    async def sign(self, data: bytes, version: int) -> str:
        """The base64 ed25519 signature of ``data`` by version ``version`` of the key."""
        return await self._signed_in().run(self._sign, data, version)

    async def public_keys(self) -> tuple[int, list[PublicKey]]:
        """The key's latest version, and the public key of every version Vault keeps."""
        return await self._signed_in().run(self._keys)
