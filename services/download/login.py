"""The console's login and logout, forwarded to Vault so the browser talks to one origin only.

``POST /api/v1/login`` takes ``{"username", "password"}`` and logs in with Vault's userpass
method (``CARVE_VAULT_USERPASS_MOUNT``); the answer carries the Vault token, which the console
keeps in sessionStorage. The password is passed to Vault and dropped: it is never stored,
logged or put in the audit row (which records the user name and the outcome). Attempts are
limited per client address and per user name (``CARVE_LOGIN_PER_MINUTE`` each, in this
replica), so a guessing run costs its author minutes per handful of tries.
``POST /api/v1/logout`` revokes the caller's token in Vault and in this service's cache.
"""

from __future__ import annotations

import re
import time

from aiohttp import web
from cachetools import TTLCache

from services.download import keys
from services.download.audit import AUDIT
from services.download.auth import header_token
from services.download.bodies import parse_json, read_body
from services.download.tokens import Identity
from shared.errors import InvalidRequest, LimitExceeded, Unauthorized
from shared.vault import InvalidToken, LoginRefused

# What Vault's userpass accepts as a user name, and a bound on the password.
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_MAX_PASSWORD = 1024


class LoginLimiter:
    """At most ``per_minute`` attempts per key in any sliding 60 seconds."""

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self.per_minute = per_minute
        # Per key, the times of its recent attempts (at most per_minute of them).
        self._tries: TTLCache[str, list[float]] = TTLCache(max_keys, 60)

    def allow(self, *names: str, now: float | None = None) -> float:
        """0 when every key may try once more (and counts the try); else seconds to wait."""
        now = time.monotonic() if now is None else now
        recent = {name: [t for t in self._tries.get(name, []) if now - t < 60] for name in names}
        full = [tries[0] for tries in recent.values() if len(tries) >= self.per_minute]
        if full:
            return max(1.0, 60 - (now - min(full)))
        for name, tries in recent.items():
            self._tries[name] = [*tries, now]  # re-set: the entry lives 60 s past its last try
        return 0.0


LIMITER = web.AppKey("login_limiter", LoginLimiter)


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
    wait = request.app[LIMITER].allow("client:" + entry.client, "user:" + username.lower())
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
