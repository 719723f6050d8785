"""The console's login and logout, forwarded to Vault so the browser talks to one origin only.

``POST /api/v1/login`` takes ``{"username", "password"}`` and logs in with Vault's userpass
method (``CARVE_VAULT_USERPASS_MOUNT``); the answer carries the Vault token, which the console
keeps in sessionStorage. The password is passed to Vault and dropped: it is never stored,
logged or put in the audit row (which records the user name and the outcome). Attempts are
limited so that a guessing run costs its author minutes per handful of tries, and so that
nobody can lock another responder out (``services.download.login_limits``).
``POST /api/v1/logout`` revokes the caller's token in Vault and in this service's cache.
"""

from __future__ import annotations

import re

from aiohttp import web

from services.download import keys
from services.download.audit import AUDIT
from services.download.auth import header_token
from services.download.bodies import parse_json, read_body
from services.download.login_limits import LIMITER
from services.download.tokens import Identity
from shared.errors import InvalidRequest, LimitExceeded, Unauthorized
from shared.vault import InvalidToken, LoginRefused

# What Vault's userpass accepts as a user name, and a bound on the password.
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_MAX_PASSWORD = 1024


def _credentials(body: bytes) -> tuple[str, str]:
    fields = parse_json(body, '{"username": ..., "password": ...}')
    if not isinstance(fields, dict):
        raise InvalidRequest("body must be a JSON object")
    username, password = fields.get("username"), fields.get("password")
    if not isinstance(username, str) or not _USERNAME.fullmatch(username):
        raise InvalidRequest("username must be 1 to 128 characters of [A-Za-z0-9._@-]")
    if not isinstance(password, str) or not 0 < len(password) <= _MAX_PASSWORD:
        raise InvalidRequest(f"password must be a string of 1 to {_MAX_PASSWORD} characters")
    return username, password


async def login(request: web.Request) -> web.Response:
    username, password = _credentials(await read_body(request))
    entry = request[AUDIT]
    entry.display_name = f"userpass-{username}"  # who tried, even when refused
    limiter = request.app[LIMITER]
    wait = limiter.attempt(entry.client, username)
    if wait:
        raise LimitExceeded(
            "too many login attempts: wait a minute", "login_rate", retry_after=round(wait)
        )
    settings = request.app[keys.SETTINGS]
    vault = request.app[keys.VAULT]
    try:
        auth = await vault.userpass_login(settings.vault_userpass_mount, username, password)
    except LoginRefused as exc:
        request.app[keys.METRICS].auth_failures.labels("login").inc()
        limiter.failed(entry.client, username)
        raise Unauthorized("invalid username or password") from exc
    finally:
        del password
    token = str(auth["client_token"])
    # The identity as the API will see it (the same lookup the other requests make).
    identity = await request.app[keys.AUTHORIZER].authenticate(token)
    entry.identify(identity)
    return web.json_response(
        {
            "token": token,
            "lease_duration": auth.get("lease_duration"),
            **whoami_view(request, identity),
        },
        headers={"Cache-Control": "no-store"},
    )


def whoami_view(request: web.Request, identity: Identity) -> dict[str, object]:
    settings = request.app[keys.SETTINGS]
    return {
        "display_name": identity.display_name,
        "entity_id": identity.entity_id,
        "can_read": settings.vault_policy in identity.policies,
        "is_admin": settings.vault_admin_policy in identity.policies,
        # Downloads must say why (CARVE_DOWNLOAD_JUSTIFICATION): the console asks first.
        "justification": settings.download_justification,
    }


async def logout(request: web.Request) -> web.Response:
    token = header_token(request)
    authorizer = request.app[keys.AUTHORIZER]
    identity = await authorizer.authenticate(token)
    request[AUDIT].identify(identity)
    assert token is not None  # authenticate() refused a missing one
    try:
        await request.app[keys.VAULT].revoke_self(token)
    except InvalidToken:
        pass  # revoked meanwhile: the outcome is the same
    authorizer.forget(token)
    return web.json_response({"revoked": True})


async def whoami(request: web.Request) -> web.Response:
    """Who the token is and what the console may offer it (no policy needed to ask)."""
    identity = await request.app[keys.AUTHORIZER].authenticate(header_token(request))
    return web.json_response(whoami_view(request, identity), headers={"Cache-Control": "no-store"})


def setup_login(app: web.Application) -> None:
    """The routes; create_app sets ``app[LIMITER]``."""
    app.router.add_post("/api/v1/login", login, name="login")
    app.router.add_post("/api/v1/logout", logout, name="logout")
    app.router.add_get("/api/v1/whoami", whoami, name="whoami")
