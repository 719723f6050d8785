"""Single sign-on for the console: Vault's OIDC method, forwarded so the browser sees one origin.

The authorization-code flow, with Vault as the OIDC client (it holds the client secret and
checks the provider's ID token):

1. ``POST /api/v1/login/oidc``: this service asks Vault for an ``auth_url`` (role
   ``CARVE_VAULT_OIDC_ROLE``, redirect ``CARVE_OIDC_REDIRECT_URI``); the console sends the
   browser there.
2. The provider signs the responder in and sends the browser back to the console
   (``/ui/?code=...&state=...``).
3. ``POST /api/v1/login/oidc/callback`` with that code and state: this service hands them
   to Vault's callback, which exchanges the code, validates the ID token (issuer, audience,
   signature, the nonce Vault chose in step 1) and returns a Vault token with the role's
   policies. The answer is the same as a userpass login's.

Login CSRF: step 1 also sets a random nonce in an HttpOnly, SameSite=Strict cookie scoped to
these endpoints and gives it to Vault as ``client_nonce``; step 3 hands the cookie's nonce
back, and Vault refuses a callback whose nonce differs. So a code and state obtained by
someone else (an attacker's own sign-in, sent to a responder as a link) sign nobody in: the
responder's browser holds no such nonce. Under https it is a ``__Host-`` cookie (see nonce_cookie).

``GET /api/v1/login/oidc`` says whether SSO is configured. Attempts share the userpass
login's limit per client address; everything is audited like the other logins.
"""

from __future__ import annotations

import logging
import re
import secrets

from aiohttp import web

from services.download import keys
from services.download.audit import AUDIT
from services.download.bodies import parse_json, read_body
from services.download.login import whoami_view
from services.download.login_limits import LIMITER
from services.download.settings import DownloadSettings
from shared.errors import InvalidRequest, LimitExceeded, NotFound, Unauthorized
from shared.vault import LoginRefused

# What Vault's state and a provider's code look like: opaque, URL-safe, bounded.
_OPAQUE = re.compile(r"[A-Za-z0-9._~+/=-]{1,2048}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_COOKIE_AGE = 600  # seconds: as long as a sign-in at the provider may take
log = logging.getLogger(__name__)


def nonce_cookie(settings: DownloadSettings) -> tuple[str, str, bool]:
    """The nonce cookie's name, path and Secure flag. Under https it is a ``__Host-``
    cookie (Secure, Path=/, no Domain), which a sibling subdomain cannot plant or shadow;
    on plain http (loopback, tests) it is scoped to the two endpoints."""
    if settings.oidc_redirect_uri.startswith("https://"):
        return "__Host-carve_sso_nonce", "/", True
    return "carve_sso_nonce", "/api/v1/login/oidc", False


def _configured(request: web.Request) -> bool:
    settings = request.app[keys.SETTINGS]
    return bool(settings.vault_oidc_role and settings.oidc_redirect_uri)


def _limit(request: web.Request) -> None:
    wait = request.app[LIMITER].attempt(request[AUDIT].client)
    if wait:
        raise LimitExceeded(
            "too many login attempts: wait a minute", "login_rate", retry_after=round(wait)
        )


async def sso_status(request: web.Request) -> web.Response:
    return web.json_response({"enabled": _configured(request)})


async def sso_start(request: web.Request) -> web.Response:
    if not _configured(request):
        raise NotFound("single sign-on is not configured (CARVE_VAULT_OIDC_ROLE)")
    _limit(request)
    settings = request.app[keys.SETTINGS]
    nonce = secrets.token_urlsafe(32)
    try:
        url = await request.app[keys.VAULT].oidc_auth_url(
            settings.vault_oidc_mount,
            settings.vault_oidc_role,
            settings.oidc_redirect_uri,
            nonce,
        )
    except LoginRefused as exc:  # the role, redirect URI or mount is not what Vault has: say so
        log.warning("single sign-on start refused by Vault: %s", exc)
        raise Unauthorized("single sign-on is refused by Vault (check its OIDC role)") from exc
    response = web.json_response({"auth_url": url}, headers={"Cache-Control": "no-store"})
    name, path, secure = nonce_cookie(settings)
    response.set_cookie(
        name, nonce, max_age=_COOKIE_AGE, path=path, httponly=True, samesite="Strict", secure=secure
    )
    return response


def _code_and_state(body: bytes) -> tuple[str, str]:
    fields = parse_json(body, '{"code": ..., "state": ...}')
    code = fields.get("code") if isinstance(fields, dict) else None
    state = fields.get("state") if isinstance(fields, dict) else None
    if not (isinstance(code, str) and _OPAQUE.fullmatch(code)):
        raise InvalidRequest("code is missing or malformed")
    if not (isinstance(state, str) and _OPAQUE.fullmatch(state)):
        raise InvalidRequest("state is missing or malformed")
    return code, state


async def sso_callback(request: web.Request) -> web.Response:
    if not _configured(request):
        raise NotFound("single sign-on is not configured (CARVE_VAULT_OIDC_ROLE)")
    code, state = _code_and_state(await read_body(request))
    _limit(request)
    name, path, secure = nonce_cookie(request.app[keys.SETTINGS])
    nonce = request.cookies.get(name, "")
    if not _NONCE.fullmatch(nonce):
        request.app[keys.METRICS].auth_failures.labels("login").inc()
        raise Unauthorized("this sign-in was not started in this browser; start again")
    settings = request.app[keys.SETTINGS]
    try:
        auth = await request.app[keys.VAULT].oidc_callback(
            settings.vault_oidc_mount, state, code, nonce
        )
    except LoginRefused as exc:
        request.app[keys.METRICS].auth_failures.labels("login").inc()
        raise Unauthorized("the single sign-on was refused; start again") from exc
    token = str(auth["client_token"])
    identity = await request.app[keys.AUTHORIZER].authenticate(token)
    request[AUDIT].identify(identity)
    response = web.json_response(
        {
            "token": token,
            "lease_duration": auth.get("lease_duration"),
            **whoami_view(request, identity),
        },
        headers={"Cache-Control": "no-store"},
    )
    response.del_cookie(name, path=path, secure=secure, httponly=True, samesite="Strict")
    return response


def setup_oidc(app: web.Application) -> None:
    app.router.add_get("/api/v1/login/oidc", sso_status, name="login_sso_status")
    app.router.add_post("/api/v1/login/oidc", sso_start, name="login_sso")
    app.router.add_post("/api/v1/login/oidc/callback", sso_callback, name="login_sso_callback")
