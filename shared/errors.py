"""Domain errors shared by every service.

The tree decides what the caller sees (HTTP services) or what happens to a
queued message (workers)::

    CarveError
    ├── ClientError            bad input: a JSON error body, osquery gives up on the request
    │   ├── InvalidRequest        400  malformed JSON, wrong types, inconsistent sizes, bad block
    │   ├── Unauthorized          401  no or bad credentials
    │   ├── Forbidden             403  credentials lack the policy, node key mismatch
    │   ├── NotFound              404  unknown carve
    │   ├── UnknownSession        404  session id never issued, or ended
    │   ├── Conflict              409  carve_id already used
    │   │   └── NotComplete           409  the archive is asked for before the carve is complete
    │   ├── Gone                  410  the carve's bytes were deleted (expired or deleted)
    │   ├── PayloadTooLarge       413  body larger than the session's block size needs
    │   └── LimitExceeded         429  a host's (or the fleet's) share is used up; code says which
    ├── Unavailable            a backend is down or slow: fast non-JSON 503, osquery 5.22+ retries
    └── MessageError           raised while handling a queued message
        ├── TransientError        the message is fine, a backend is not: keep it, retry later
        └── PoisonMessage         the message can never succeed: dead-letter it

Handlers raise these; one middleware (HTTP) or the consumer adapter (AMQP)
turns them into replies, acks or rejects.
"""

from __future__ import annotations


class CarveError(Exception):
    """Base of every error this project raises on purpose."""


class ClientError(CarveError):
    """The request is wrong; retrying the same request cannot help."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(ClientError):
    status = 400
    code = "invalid_request"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class UnknownSession(ClientError):
    status = 404
    code = "unknown_session"


class Conflict(ClientError):
    status = 409
    code = "conflict"


class NotComplete(Conflict):
    code = "not_complete"


class Gone(ClientError):
    status = 410
    code = "gone"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class LimitExceeded(ClientError):
    """A start that would take its host, or all hosts, past a configured share."""

    status = 429
    code = "limit_exceeded"

    def __init__(self, message: str, code: str, **details: object) -> None:
        super().__init__(message, **details)
        self.code = code


class Unavailable(CarveError):
    """A backend (Redis, RabbitMQ, MongoDB, Vault) cannot serve us right now."""

    def __init__(self, backend: str, reason: str = "unavailable") -> None:
        super().__init__(f"{backend} {reason}")
        self.backend = backend
        self.reason = reason


class MessageError(CarveError):
    """Raised while handling a queued message."""


class TransientError(MessageError):
    """The message is valid but a backend failed: keep it queued and retry."""


class PoisonMessage(MessageError):
    """The message can never be processed: send it to the dead-letter queue."""
