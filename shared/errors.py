"""Domain errors shared by every service, grouped by what the error is.

The branch decides what the caller sees (HTTP services) or what happens to a
queued message (workers); each middleware has one rule per branch::

    CarveError
    ├── ClientError            refused as sent: a 4xx; only a 408 or 429 may succeed later
    │   ├── InvalidRequest        400  malformed JSON, wrong types, inconsistent sizes, bad block
    │   ├── Unauthorized          401  no or bad credentials
    │   │   ├── InvalidToken          Vault does not know the token (shared.vault)
    │   │   └── LoginRefused          Vault refused a login (shared.vault)
    │   ├── Forbidden             403  credentials lack the policy, node key mismatch
    │   ├── NotFound              404  unknown carve
    │   ├── UnknownSession        404  session id never issued, or ended
    │   ├── RequestTimeout        408  the request body did not arrive in time (services.download)
    │   ├── Conflict              409  carve_id already used
    │   │   ├── NotComplete           409  the archive is asked for before the carve is complete
    │   │   └── Held                  409  a legal hold keeps the carve (shared.holds)
    │   ├── Gone                  410  the carve's bytes were deleted (expired or deleted)
    │   │   └── Failed                410  the carve failed: its archive will never be complete
    │   ├── PayloadTooLarge       413  body larger than the session's block size needs
    │   ├── RangeNotSatisfiable   416  a byte range past the archive's end (services.download)
    │   ├── ArchiveRefused        422  a hostile or unreadable tar; code: why (services.download)
    │   └── LimitExceeded         429  a share is used up; code says which
    │       └── TarBusy               429  too many tar jobs wait (services.download)
    ├── Unavailable            a backend is down or slow, or full: retry later. HTTP: a fast 503
    │                          with Retry-After (non-JSON to osquery, which 5.22+ retries); a
    │                          worker keeps its message queued and retries it
    ├── CorruptArchive         data is corrupt: stored chunks do not fit the carve's geometry.
    │                          Never served (500), never finalized (the carve is marked failed)
    └── PoisonMessage          a queued message can never be processed: dead-letter it

Handlers raise these; one middleware (HTTP) or the consumer adapter (AMQP)
turns them into replies, acks or rejects.
"""

from __future__ import annotations


class CarveError(Exception):
    """Base of every error this project raises on purpose."""


class ClientError(CarveError):
    """The request is refused as sent (a 4xx); only RequestTimeout and LimitExceeded may
    succeed when the same request comes again later."""

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


class Held(Conflict):
    """A legal hold stands on the carve: nothing deletes its bytes until the last is released."""

    code = "held"


class Gone(ClientError):
    status = 410
    code = "gone"


class Failed(Gone):
    """A failed carve's archive: it will never be complete (410, not 409: waiting is no use)."""

    code = "failed"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class LimitExceeded(ClientError):
    """A share is used up (a host's or the fleet's carves, logins, tar jobs): the code says
    which; retrying later may succeed."""

    status = 429
    code = "limit_exceeded"

    def __init__(self, message: str, code: str, **details: object) -> None:
        super().__init__(message, **details)
        self.code = code


class Unavailable(CarveError):
    """A backend (Redis, RabbitMQ, MongoDB, Vault) cannot serve us right now, or a capacity
    of our own is full: the work itself is fine, retry it later.

    ``backend`` names what failed (a metric label in the ingest), ``reason`` says how.
    """

    def __init__(self, backend: str, reason: str = "unavailable") -> None:
        super().__init__(f"{backend} {reason}")
        self.backend = backend
        self.reason = reason


class CorruptArchive(CarveError):
    """A stored chunk is missing or has the wrong length: the archive is damaged."""


class PoisonMessage(CarveError):
    """The message can never be processed: send it to the dead-letter queue."""
