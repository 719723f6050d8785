"""The webhook endpoints an operator configures, and which events each one wants.

``CARVE_WEBHOOKS_FILE``: a YAML list of ``{name, url, secret, events, format}``; or, for one
endpoint, ``CARVE_WEBHOOK_URL`` + ``CARVE_WEBHOOK_SECRET`` (+ ``CARVE_WEBHOOK_EVENTS``).
``events`` are event types or globs whose ``*`` stands for whole words (``carve.*``,
``carve.hold.*``, ``*``), so the broker can filter them too: each endpoint gets its own queue
bound with the matching topic patterns.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from services.events.settings import EventsServiceSettings

_SECRET_PREFIX = "whsec_"
_MIN_SECRET_BYTES = 16


class Format(StrEnum):
    CLOUDEVENTS = "cloudevents"  # the CloudEvent as published, signed (Standard Webhooks)
    SLACK = "slack"  # a Slack-compatible {"text": ...} message, signed the same way


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    url: SecretStr  # never logged, never shown: a chat URL is its own credential
    secret: SecretStr
    events: tuple[str, ...] = ("carve.*",)
    format: Format = Format.CLOUDEVENTS

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("https://", "http://")):
            raise ValueError("the url must be http:// or https://")
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(_SECRET_PREFIX):
            raise ValueError(f"the secret must be a Standard Webhooks secret ({_SECRET_PREFIX}...)")
        try:
            key = base64.b64decode(raw.removeprefix(_SECRET_PREFIX), validate=True)
        except binascii.Error as exc:
            raise ValueError("the secret is not base64 after whsec_") from exc
        if len(key) < _MIN_SECRET_BYTES:
            raise ValueError(f"the secret must hold at least {_MIN_SECRET_BYTES} random bytes")
        return value

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("an endpoint wants at least one event type or glob")
        for pattern in value:
            words = pattern.split(".")
            if not all(w == "*" or (w and "*" not in w and "#" not in w) for w in words):
                raise ValueError(f"{pattern!r}: '*' must stand for whole words (carve.*)")
        return value

    def wants(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.events)

    def bindings(self) -> list[str]:
        """The topic patterns of the endpoint's queue (``*`` in a glob matches any words)."""
        return sorted({pattern.replace("*", "#") for pattern in self.events})


def load_endpoints(settings: EventsServiceSettings) -> list[Endpoint]:
    """The configured endpoints; ValueError naming the problem (the service does not start)."""
    raw: list[Any] = []
    if settings.webhooks_file:
        loaded = yaml.safe_load(Path(settings.webhooks_file).read_text())
        if not isinstance(loaded, list):
            raise ValueError(f"{settings.webhooks_file}: a YAML list of endpoints is expected")
        raw.extend(loaded)
    if settings.webhook_url is not None and settings.webhook_url.get_secret_value():
        raw.append(
            {
                "name": "default",
                "url": settings.webhook_url.get_secret_value(),
                "secret": settings.webhook_secret.get_secret_value()
                if settings.webhook_secret
                else "",
                "events": [e.strip() for e in settings.webhook_events.split(",") if e.strip()],
                "format": settings.webhook_format,
            }
        )
    endpoints = []
    for index, item in enumerate(raw):
        try:
            endpoints.append(Endpoint.model_validate(item))
        except ValidationError as exc:
            name = item.get("name") if isinstance(item, dict) else None
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"webhook endpoint {name or index}: {problems}") from None
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise ValueError(f"webhook endpoint names must be unique: {names}")
    return endpoints
