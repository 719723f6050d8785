"""The download service's responder API (docs/api.md) over a caller-supplied requests.Session.

The session is the transport seam: ``run`` builds one, tests pass their own with a transport
adapter mounted on it.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Mapping
from typing import Any

import requests

from clients.carvectl.errors import (
    EXIT_ERROR,
    EXIT_FORBIDDEN,
    EXIT_GONE,
    EXIT_HELD,
    EXIT_INTEGRITY,
    EXIT_NOT_COMPLETE,
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    EXIT_USAGE,
    CliError,
)
from clients.carvectl.render import one_line

DEFAULT_SERVER = "http://127.0.0.1:8082"
# The download service's default CARVE_VAULT_POLICY; a deployment may name it differently.
DEFAULT_POLICY = "osquery-file-carve-file-requests"
TOKEN_HEADER = "X-Vault-Token"
# Connect, then per-read: a stalled stream fails instead of hanging a responder's terminal.
TIMEOUT = (10.0, 120.0)

Carve = dict[str, Any]


def _response_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _conflict_message(body: Mapping[str, Any]) -> str:
    return (
        f"carve not complete yet: {body.get('status', '?')}, "
        f"{body.get('blocks_received', '?')}/{body.get('block_count', '?')} blocks"
    )


_SIMPLE_ERRORS = {
    400: ("the server rejected the request", EXIT_USAGE),
    404: ("not found", EXIT_NOT_FOUND),
    416: ("range not satisfiable", EXIT_ERROR),
    429: ("the server is busy with this carve or with you, retry shortly", EXIT_ERROR),
    503: ("service unavailable (MongoDB or Vault unreachable)", EXIT_ERROR),
}


def gone_message(body: Mapping[str, Any]) -> str:
    """A 410 as a responder reads it: deleted (when, by whom), expired (when), failed (why)."""
    status = one_line(str(body.get("status") or "gone"))
    at = one_line(str(body.get("at") or "an unknown time"))
    if status == "failed":
        return f"the carve failed at {at}: {one_line(str(body.get('reason') or '?'))}"
    if status == "deleted":
        return f"the carve was deleted at {at} by {one_line(str(body.get('by') or 'someone'))}"
    return f"the carve is {status} (its bytes were deleted at {at})"


def _coded(status: int, body: Mapping[str, Any], detail: str) -> CliError | None:
    """Refusals told apart by their code: a legal hold, a missing justification."""
    if status == 409 and body.get("code") == "held":
        return CliError(f"refused: {detail}", EXIT_HELD)
    if status == 400 and body.get("code") == "justification_required":
        return CliError(f"{detail} (carvectl: --reason TEXT)", EXIT_USAGE)
    return None


def error_from_response(response: requests.Response) -> CliError:
    """The one-line message and exit code for an HTTP error answer."""
    status = response.status_code
    body = _response_body(response)
    detail = one_line(str(body.get("error") or response.reason or f"HTTP {status}"))
    if status == 401:
        return CliError(
            "not logged in or token expired/revoked: run carvectl login", EXIT_UNAUTHORIZED
        )
    if status == 403:
        return CliError(
            "your Vault token lacks the policy the download service requires "
            f"(its CARVE_VAULT_POLICY, by default {DEFAULT_POLICY}): {detail}",
            EXIT_FORBIDDEN,
        )
    if (coded := _coded(status, body, detail)) is not None:
        return coded
    if status == 409 and body.get("code") == "not_complete":
        return CliError(_conflict_message(body), EXIT_NOT_COMPLETE)
    if status == 410:
        return CliError(gone_message(body), EXIT_GONE)
    if status == 412:
        return CliError(f"the server's copy changed: {detail}")
    if status == 422:
        code = one_line(str(body.get("code") or "refused"))
        return CliError(f"the server refused the archive ({code}): {detail}", EXIT_INTEGRITY)
    if status in _SIMPLE_ERRORS:
        prefix, exit_code = _SIMPLE_ERRORS[status]
        return CliError(f"{prefix}: {detail}", exit_code)
    if 300 <= status < 400:
        # Following it would hand the token to wherever it points.
        where = one_line(response.headers.get("Location", "?"))
        return CliError(f"the server redirects to {where}; not following (check --server)")
    return CliError(f"server error (HTTP {status}): {detail}")


def network_reason(exc: BaseException) -> str:
    # requests wraps urllib3's errors, which wrap the socket's: the innermost message is the
    # readable one ("Connection refused", "IncompleteRead(...)").
    inner: Any = exc
    for _ in range(4):
        nested = getattr(inner, "reason", None) or (inner.args[0] if inner.args else None)
        if isinstance(nested, str):
            return one_line(nested, 200)
        if not isinstance(nested, BaseException):
            break
        inner = nested
    return one_line(str(inner), 200)


class Api:
    """The download service's responder API over a caller-supplied ``requests.Session``.

    Every request carries the token in ``X-Vault-Token``, verifies TLS (``verify`` is True or a
    CA bundle, never False) and refuses redirects: requests keeps custom headers on a redirect
    to another host, so following one could leak the token.
    """

    def __init__(
        self,
        session: requests.Session,
        server: str,
        token: str | None,
        *,
        verify: str | bool = True,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        self._session = session
        self.server = server.rstrip("/")
        self._token = token
        # Passed on every request: a session-level verify loses to REQUESTS_CA_BUNDLE.
        self._verify: str | bool = verify if verify else True
        self._timeout = timeout
        # Why the responder downloads (--reason): sent with every download of bytes.
        self.justification: str | None = None

    def __repr__(self) -> str:
        return f"Api(server={self.server!r})"

    def _url(self, *parts: str, base: str = "carves") -> str:
        quoted = "".join("/" + urllib.parse.quote(part, safe="") for part in parts)
        return f"{self.server}/api/v1/{base}{quoted}"

    def _why(self, params: Mapping[str, str | int] | None = None) -> dict[str, str | int]:
        """``params`` with the justification, for a download of a carve's bytes (in the
        query: UTF-8, where a header carries Latin-1 only)."""
        why = {"justification": self.justification} if self.justification else {}
        return {**(params or {}), **why}

    def send(self, method: str, url: str, body: object = None) -> dict[str, Any]:
        """A JSON request that changes something (PUT, PATCH, DELETE); its JSON answer."""
        if not self._token:
            raise CliError(
                "not logged in: run carvectl login (or set VAULT_TOKEN)", EXIT_UNAUTHORIZED
            )
        headers = {TOKEN_HEADER: self._token, "Accept": "application/json"}
        try:
            response = self._session.request(
                method,
                url,
                json=body,
                headers=headers,
                verify=self._verify,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise CliError(f"cannot reach {self.server}: {network_reason(exc)}") from exc
        with contextlib.closing(response):
            if response.status_code not in (200, 201):
                raise error_from_response(response)
            return _response_body(response)

    def request(
        self,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        if not self._token:
            raise CliError(
                "not logged in: run carvectl login (or set VAULT_TOKEN)", EXIT_UNAUTHORIZED
            )
        sent = {TOKEN_HEADER: self._token, "Accept": "application/json", **(headers or {})}
        try:
            return self._session.get(
                url,
                params=params,
                headers=sent,
                stream=stream,
                verify=self._verify,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise CliError(
                f"TLS verification of {self.server} failed: {network_reason(exc)} "
                "(point --cacert or CARVECTL_CACERT at the server's CA)"
            ) from exc
        except requests.Timeout as exc:
            raise CliError(f"{self.server} did not answer in time") from exc
        except requests.RequestException as exc:
            raise CliError(f"cannot reach {self.server}: {network_reason(exc)}") from exc

    def url_of(self, carve_id: str, *parts: str) -> str:
        """The URL of a carve's resource (each part quoted)."""
        return self._url(carve_id, *parts)

    def checked(self, response: requests.Response) -> bytes:
        """The body of a 200 answer (any other: its error)."""
        with contextlib.closing(response):
            if response.status_code != 200:
                raise error_from_response(response)
            return response.content

    def _json(self, url: str, params: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        response = self.request(url, params=params)
        with contextlib.closing(response):
            if response.status_code != 200:
                raise error_from_response(response)
            body = _response_body(response)
        if not body:
            raise CliError(f"unexpected answer from {self.server}: not a JSON object")
        return body

    def list_carves(
        self,
        *,
        status: str | None = None,
        since: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        device: str | None = None,
        request_id: str | None = None,
        q: str | None = None,
        sort: str | None = None,
        verdict: str | None = None,
        case: str | None = None,
        held: str | None = None,
    ) -> dict[str, Any]:
        query = {"status": status, "since": since, "limit": limit, "cursor": cursor}
        query |= {"device": device, "request_id": request_id, "q": q, "sort": sort}
        query |= {"verdict": verdict, "case": case, "held": held}
        return self._json(self._url(), {k: v for k, v in query.items() if v is not None})

    def carve(self, carve_id: str) -> Carve:
        return self._json(self._url(carve_id))

    def campaign(self, request_id: str, params: Mapping[str, str | int]) -> dict[str, Any]:
        return self._json(self._url(request_id, base="requests"), params)

    def export(
        self, request_id: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> requests.Response:
        """The streaming export answer, whatever its status."""
        sent = {"Accept-Encoding": "identity", **headers}
        url = self._url(request_id, "export", base="requests")
        return self.request(url, params=self._why(params), headers=sent, stream=True)

    def member(self, carve_id: str, path: str) -> requests.Response:
        """The streaming answer for one member's bytes, whatever its status."""
        quoted = "/".join(urllib.parse.quote(part, safe="") for part in path.strip("/").split("/"))
        url = f"{self._url(carve_id, 'files')}/{quoted}"
        sent = {"Accept-Encoding": "identity"}
        return self.request(url, params=self._why(), headers=sent, stream=True)

    def files(self, carve_id: str, limit: int | None = None) -> dict[str, Any]:
        return self._json(self._url(carve_id, "files"), {"limit": limit} if limit else None)

    def member_at(self, carve_id: str, index: int) -> requests.Response:
        """The streaming answer for the member at position ``index`` (whatever its status)."""
        sent = {"Accept-Encoding": "identity"}
        url = self._url(carve_id, "members", str(index))
        return self.request(url, params=self._why(), headers=sent, stream=True)

    def archive(self, carve_id: str, headers: Mapping[str, str]) -> requests.Response:
        """The streaming archive answer, whatever its status: the caller handles 206 and 416."""
        # identity: a Content-Encoding would make Range offsets and Content-Length mean the
        # encoded bytes, not the archive's.
        sent = {"Accept-Encoding": "identity", **headers}
        return self.request(
            self._url(carve_id, "archive"), params=self._why(), headers=sent, stream=True
        )
