"""``carve-events`` settings: ``CARVE_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import AmqpSettings, EventsSettings, HttpSettings, MongoSettings


class EventsServiceSettings(HttpSettings, AmqpSettings, MongoSettings, EventsSettings):
    http_port: int = Field(8084, ge=0, le=65535)
    # The endpoints: a YAML list of {name, url, secret, events, format} ...
    webhooks_file: str | None = None
    # ... or, for one endpoint, these (CARVE_WEBHOOK_EVENTS: a comma list of types or globs).
    webhook_url: SecretStr | None = None  # a Slack URL carries its token: never logged
    webhook_secret: SecretStr | None = None
    webhook_events: str = "carve.*"
    webhook_format: str = "cloudevents"
    # A private CA's PEM bundle for the endpoints' certificates (TLS is always verified).
    webhook_cacert: str | None = None
    # Connect and read timeouts of one attempt (seconds), and the most of an answer read.
    webhook_connect_timeout: float = Field(5.0, gt=0)
    webhook_read_timeout: float = Field(10.0, gt=0)
    webhook_max_response_bytes: int = Field(4096, ge=0, le=1024 * 1024)
    # Retries: exponential backoff from CARVE_WEBHOOK_BACKOFF, capped, with jitter, for
    # CARVE_WEBHOOK_RETRY_FOR seconds after the event; then the delivery is dead.
    webhook_retry_for: float = Field(86400.0, gt=0)
    webhook_backoff: float = Field(1.0, gt=0)
    webhook_backoff_max: float = Field(3600.0, gt=0)
    # Deliveries in flight at once per endpoint (a slow endpoint holds only its own).
    webhook_concurrency: int = Field(4, ge=1, le=64)
    # The console's address (https://.../ui/), for the links in chat messages (format: slack);
    # empty: no link.
    console_url: str = ""
