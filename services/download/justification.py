"""Why a responder downloads: ``X-Carve-Justification`` (or ``?justification=``) on every
archive, member and export download, stored in the request's audit row.

``CARVE_DOWNLOAD_JUSTIFICATION=required`` refuses a download without one (400, before any
byte is read); ``off`` (the default) still records one that is given. A justification is
plain text of at most ``MAX_LENGTH`` characters, with no control or format characters
(``shared.text``). A header carries Latin-1 only: send other text in the query field (a
browser's ticket download does, URL-encoded as UTF-8).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from services.download import keys
from services.download.audit import AUDIT
from shared.errors import InvalidRequest
from shared.text import check_plain

HEADER = "X-Carve-Justification"
QUERY = "justification"
MAX_LENGTH = 500
# The routes that hand out a carve's bytes (services/download/routes.py).
DOWNLOADS = frozenset({"archive", "file", "member", "export", "file_request"})


class JustificationRequired(InvalidRequest):
    code = "justification_required"


def justification_of(request: web.Request) -> str | None:
    """The request's justification, checked; None when it gives none."""
    header = request.headers.get(HEADER)
    query = request.query.get(QUERY)
    if header is not None and query is not None and header.strip() != query.strip():
        raise InvalidRequest(f"give the justification once: {HEADER} or ?{QUERY}=, not both")
    raw = header if header is not None else query
    if raw is None:
        return None
    if len(raw) > MAX_LENGTH:
        raise InvalidRequest(f"the justification is longer than {MAX_LENGTH} characters")
    try:
        return check_plain(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the justification is refused: {exc}") from exc


@web.middleware
async def justified(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Records a download's justification in its audit row; refuses one without it when the
    service requires it (HEAD requests read no bytes and need none)."""
    route = request.match_info.route.name
    if route not in DOWNLOADS or request.match_info.http_exception is not None:
        return await handler(request)
    text = justification_of(request)
    if (entry := request.get(AUDIT)) is not None:
        entry.justification = text
    required = request.app[keys.SETTINGS].download_justification == "required"
    if text is None and required and request.method != "HEAD":
        raise JustificationRequired(
            f"this service requires a justification for every download: say why in the "
            f"{HEADER} header or the ?{QUERY}= query field (1 to {MAX_LENGTH} characters)"
        )
    return await handler(request)
