"""Settings parts, composed by each service's own Settings class.

Every field is read from the environment with the ``CARVE_`` prefix
(``redis_url`` is ``CARVE_REDIS_URL``). Defaults match the local run: every
backend on 127.0.0.1 at its standard port.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.proxies import Network, parse_networks

MiB = 1024 * 1024
GiB = 1024 * MiB


class _Part(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARVE_", extra="ignore")


class HttpSettings(_Part):
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    # /metrics also on a port of its own (0: only on http_port), so a network policy can let
    # the monitoring system scrape without reaching the service's endpoints.
    metrics_port: int = Field(0, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False


class RedisSettings(_Part):
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # Socket timeouts keep a dead Redis from holding a request past osquery's 16 s.
    redis_timeout: float = Field(2.0, gt=0)
    redis_key_prefix: str = "carve:"
    # High availability (``shared.redis_client``): Sentinels (host:port,...) that watch the
    # primary named redis_sentinel_master; or a Redis Cluster (the URL names its nodes).
    redis_sentinels: str = ""
    redis_sentinel_master: str = "carve"
    redis_cluster: bool = False

    @field_validator("redis_key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # Braces would make a hash tag of the prefix: every key in one cluster slot.
        if "{" in value or "}" in value:
            raise ValueError("CARVE_REDIS_KEY_PREFIX must not contain { or }")
        return value


class AmqpSettings(_Part):
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    amqp_queue: str = "carve.blocks"
    amqp_connect_timeout: float = Field(5.0, gt=0)


class EventsSettings(_Part):
    # The topic exchange carve events go to (routing key = the event type) and their source.
    events_exchange: str = "carve.events"
    events_source: str = "urn:osquery-carve-server"
    # How often a relay publishes events another process left behind (it died after the
    # change), and how old such an event must be (its own process publishes it at once).
    events_sweep_interval: float = Field(5.0, gt=0)
    events_sweep_grace: float = Field(10.0, gt=0)
    events_publish_timeout: float = Field(10.0, gt=0)


class MongoSettings(_Part):
    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    mongo_db: str = "carves"
    mongo_bucket: str = "archives"
    mongo_timeout: float = Field(5.0, gt=0)


class VaultSettings(_Part):
    # The local run's OpenBao dev server; in production an https:// address.
    vault_addr: str = "http://127.0.0.1:8200"
    # PEM bundle of a private CA. TLS is always verified: there is no setting to turn it off.
    vault_cacert: str | None = None
    vault_timeout: float = Field(5.0, gt=0)
    # Token lookups run in threads (hvac is synchronous); at most this many at once.
    vault_concurrency: int = Field(8, ge=1, le=64)


class ProxySettings(_Part):
    # Comma-separated addresses/CIDRs of the reverse proxies (NGINX, ingress-nginx) whose
    # forwarded headers are believed: X-Forwarded-For, and the verified client certificate
    # (the ingest). Empty: none are.
    trusted_proxies: str = ""

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        parse_networks(value)  # ValueError names the bad entry
        return value

    @cached_property
    def proxy_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)


class EncryptionSettings(_Part):
    """Encryption at rest (``shared.crypto``) and how a service signs in to Vault for it."""

    # none: chunks stored as sent; vault-transit: AES-256-GCM under a per-carve data key
    # from Vault Transit. Carves already stored either way stay readable (mixed mode).
    encryption: Literal["none", "vault-transit"] = "none"
    transit_mount: str = Field("transit", pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")
    # Prefix of the per-carve Transit key names: "<transit_key>-<carve id>".
    transit_key: str = Field("osquery-carves", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    # The service's own Vault identity: AppRole (role id + secret id, the secret from a file
    # or the environment) or Kubernetes (the pod's service-account token).
    vault_auth: Literal["approle", "kubernetes"] = "approle"
    vault_auth_mount: str = ""  # default: "approle" or "kubernetes"
    vault_role_id: str = ""
    vault_secret_id: SecretStr | None = None
    vault_secret_id_file: str | None = None
    vault_kubernetes_role: str = ""
    vault_kubernetes_token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    # Plaintext data keys are kept in process memory only, this long and this many at most.
    # A miss costs a MongoDB read and a Vault unwrap, so on an assembler both must cover the
    # carves receiving at once (0 s, or fewer entries than carves in flight: one of each
    # per chunk written).
    key_cache_ttl: float = Field(300.0, ge=0)
    key_cache_size: int = Field(1024, ge=1, le=1_000_000)
    # Transit calls run in threads (hvac is synchronous): at most this many at once.
    transit_concurrency: int = Field(8, ge=1, le=64)

    @property
    def encrypting(self) -> bool:
        return self.encryption == "vault-transit"
