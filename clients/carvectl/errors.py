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
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
