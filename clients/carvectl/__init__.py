"""carvectl: the responders' command-line client of the carve download service (docs/api.md).

Log in to Vault once; the token is kept in ``$XDG_CONFIG_HOME/carvectl/token`` (mode 0600)
unless ``VAULT_TOKEN`` is set::

    carvectl login --username alice                     # Vault userpass, password prompted
    vault print token | carvectl login --method token    # any token you already hold

Find, inspect and fetch carves (an ID is a carve id, a unique prefix of one, or a request
id that one carve has)::

    carvectl list --status complete --since 2026-11-01 --all
    carvectl list --search auth.log --sort -size     # id or request id prefix, host, path
    carvectl --json list | jq -r '.[].carve_id'
    carvectl show 0f4c2a1e
    carvectl files 0f4c2a1e
    carvectl member 0f4c2a1e 7 -o evidence.bin        # INDEX from files: reaches any name
    carvectl get 0f4c2a1e --expect-sha256 <carves.sha256 from osquery>   # resumable
    carvectl extract 0f4c2a1e /var/log/auth.log -d ./evidence   # only that file's bytes
    carvectl campaign live-q-42                       # every carve of one request id
    carvectl export live-q-42 -o campaign.zip         # one ZIP, resumable, verified

``get`` downloads to ``FILE.part`` and resumes it with ``Range``/``If-Range`` when run again;
the file only gets its final name once its SHA-256 matches the server's (and ``--expect-sha256``).
``extract`` writes members under DIR at their original host path and refuses unsafe ones.
Named paths of a carve with a manifest are fetched one by one through the member endpoint,
each checked against the manifest's SHA-256; otherwise (or with no path) the whole archive
is fetched, and an archive using what osquery never writes (GNU sparse members, pax global
headers, ...) or decompressing past ``--max-bytes`` (default 16 GiB) is refused before
anything is written. ``export`` resumes from ``FILE.part`` (``FILE.part.json`` keeps the
campaign's ``as_of`` and ETag) and checks every archive against ``manifest.json``.

Environment: ``CARVECTL_SERVER``, ``CARVECTL_CACERT``, ``VAULT_TOKEN``, ``VAULT_ADDR``,
``VAULT_CACERT``, ``CARVECTL_PASSWORD``, ``XDG_CONFIG_HOME``.

Exit codes (``errors.EXIT_CODES``, listed by ``carvectl --help``): 0 ok, 1 server or network
error, 2 usage, 3 HTTP 401 (log in again), 4 HTTP 403 (token lacks the policy), 5 HTTP 404 or
no member matched, 6 HTTP 409 (carve still receiving), 7 integrity failure (SHA-256 mismatch,
unsafe members or the archive refused), 8 ambiguous id prefix or request id (the candidates
are listed), 9 HTTP 410 (deleted, expired or failed: when, by whom, why), 130 interrupted.

The package, by job: ``render`` (tables, sizes, escaped text), ``tokens`` (the token file),
``api`` (the HTTP client over an injected ``requests.Session``), ``fetch`` (the verified,
resumable download), ``extract`` (safe extraction), ``members`` (named files through the
member endpoint), ``commands``, ``campaign`` and ``login`` (what each command does), ``cli``
(argparse, ``run`` and ``main``).
"""

from __future__ import annotations

from clients.carvectl.api import DEFAULT_POLICY, DEFAULT_SERVER, Api, error_from_response
from clients.carvectl.cli import build_parser, main, run
from clients.carvectl.errors import (
    EXIT_AMBIGUOUS,
    EXIT_ERROR,
    EXIT_FORBIDDEN,
    EXIT_GONE,
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    EXIT_NOT_COMPLETE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAUTHORIZED,
    EXIT_USAGE,
    CliError,
)
from clients.carvectl.extract import (
    ExtractReport,
    extract_archive,
    matching_selector,
    stripped_path,
    unsafe_reason,
)
from clients.carvectl.fetch import (
    Fetched,
    check_sha256,
    content_disposition_filename,
    fetch_archive,
    parse_content_range,
    safe_basename,
)
from clients.carvectl.login import DEFAULT_VAULT_ADDR
from clients.carvectl.render import file_row, format_progress, format_table, human_size
from clients.carvectl.tokens import load_token, save_token, token_file

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_SERVER",
    "DEFAULT_VAULT_ADDR",
    "EXIT_AMBIGUOUS",
    "EXIT_ERROR",
    "EXIT_FORBIDDEN",
    "EXIT_GONE",
    "EXIT_INTEGRITY",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_COMPLETE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAUTHORIZED",
    "EXIT_USAGE",
    "Api",
    "CliError",
    "ExtractReport",
    "Fetched",
    "build_parser",
    "check_sha256",
    "content_disposition_filename",
    "error_from_response",
    "extract_archive",
    "fetch_archive",
    "file_row",
    "format_progress",
    "format_table",
    "human_size",
    "load_token",
    "main",
    "matching_selector",
    "parse_content_range",
    "run",
    "safe_basename",
    "save_token",
    "stripped_path",
    "token_file",
    "unsafe_reason",
]
