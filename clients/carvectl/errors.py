"""carvectl's exit codes, and the error that carries one to ``run``."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAUTHORIZED = 3
EXIT_FORBIDDEN = 4
EXIT_NOT_FOUND = 5
EXIT_NOT_COMPLETE = 6
EXIT_INTEGRITY = 7
EXIT_AMBIGUOUS = 8
EXIT_GONE = 9
EXIT_HELD = 10
EXIT_INTERRUPTED = 130

# Every exit code, as `carvectl --help` lists them.
EXIT_CODES = (
    (EXIT_OK, "ok"),
    (EXIT_ERROR, "server or network error"),
    (EXIT_USAGE, "usage error, or the server refused the request (400)"),
    (EXIT_UNAUTHORIZED, "not logged in, or the token expired or was revoked (401)"),
    (EXIT_FORBIDDEN, "the token lacks the download policy, or the admin policy (403)"),
    (EXIT_NOT_FOUND, "no such carve, request id or member (404)"),
    (EXIT_NOT_COMPLETE, "the carve is still receiving (409)"),
    (EXIT_INTEGRITY, "integrity: a SHA-256 mismatch, unsafe members, the archive refused"),
    (EXIT_AMBIGUOUS, "the id prefix or request id names several carves (they are listed)"),
    (EXIT_GONE, "the carve is gone: deleted, expired, or failed (410; when, by whom, why)"),
    (EXIT_HELD, "a legal hold keeps the carve (409 held): release it first"),
    (EXIT_INTERRUPTED, "interrupted"),
)


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
