"""The console's login limits against the real download service and OpenBao: nobody can lock a
responder out, and every POST of the API must say it sends JSON (services/download/bodies.py,
services/download/login_limits.py).

The download service believes X-Forwarded-For from loopback here (a trusted proxy), so one
test process plays many client addresses, as clients behind NGINX are seen.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from devstack.vault import POLICY, VaultAdmin
from tests.audit_rows import settled_rows
from tests.stack import Stack


@dataclass
class Login:
    url: str
    http: aiohttp.ClientSession
    vault: VaultAdmin
    stack: Stack

    def user(self) -> tuple[str, str]:
        name, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        self.vault.client.auth.userpass.create_or_update_user(name, password, policies=[POLICY])
        return name, password

    async def attempt(self, address: str, username: str, password: str) -> tuple[int, Any]:
        body = {"username": username, "password": password}
        headers = {"X-Forwarded-For": address}
        async with self.http.post(self.url + "/api/v1/login", json=body, headers=headers) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def audit(self) -> list[dict[str, Any]]:
        return await settled_rows(self.stack.db, {"action": "login"})


async def _login(stack: Stack, vault: VaultAdmin, **settings: Any) -> AsyncIterator[Login]:
    download = await stack.start_download(trusted_proxies="127.0.0.1/32", **settings)
    async with aiohttp.ClientSession() as http:
        yield Login(download.url, http, vault, stack)


@pytest.fixture
async def login(stack: Stack, vault: VaultAdmin) -> AsyncIterator[Login]:
    async for made in _login(stack, vault):
        yield made


async def test_nobody_locks_a_named_user_out(login: Login) -> None:
    name, password = login.user()
    # One address guessing: its own budget (10 tries a minute) runs out, nobody else's.
    one = [(await login.attempt("203.0.113.7", name, "wrong"))[0] for _ in range(12)]
    assert one == [401] * 10 + [429] * 2
    # Many addresses, one wrong password each (30 in all: the name is now under guard).
    many = [(await login.attempt(f"198.51.100.{i}", name, "wrong"))[0] for i in range(1, 31)]
    assert many == [401] * 30
    # Under guard, an address that failed for the name gets no second guess this minute ...
    status, refused = await login.attempt("198.51.100.1", name, password)
    assert (status, refused["code"]) == (429, "login_rate")
    assert 1 <= refused["retry_after"] <= 60
    status, _ = await login.attempt("198.51.100.2", name, "wrong-again")
    assert status == 429
    # ... while the user, from an address that did not fail, gets in with the right password,
    status, answer = await login.attempt("192.0.2.10", name, password)
    assert (status, answer.get("display_name")) == (200, f"userpass-{name}"), answer
    # and so does another user from one of the attacker's addresses (no lock on anyone else).
    other, other_password = login.user()
    status, _ = await login.attempt("198.51.100.3", other, other_password)
    assert status == 200
    rows = await login.audit()
    mine = [r for r in rows if r.get("display_name") == f"userpass-{name}"]
    outcomes = [(r["client"], r["outcome"]) for r in mine]
    assert ("192.0.2.10", "allowed") in outcomes
    assert outcomes.count(("203.0.113.7", "denied")) == 10
    assert outcomes.count(("203.0.113.7", "refused")) == 2  # 429: the password never reached Vault


async def test_a_credential_stuffing_run_gets_one_guess_per_address(
    stack: Stack, vault: VaultAdmin
) -> None:
    async for login in _login(stack, vault, login_failures_per_minute=20):
        name, password = login.user()
        # 20 addresses, one wrong password each, for 20 names: every login is now under guard.
        for i in range(20):
            status, _ = await login.attempt(f"203.0.113.{i}", f"victim{i}", "guess")
            assert status == 401
        # An address that failed gets no more tries for any name, until its failure is old ...
        status, refused = await login.attempt("203.0.113.0", "victim7", "guess")
        assert (status, refused["code"]) == (429, "login_rate")
        status, _ = await login.attempt("203.0.113.5", name, password)
        assert status == 429
        # ... and a responder at an address that did not fail logs in.
        status, _ = await login.attempt("192.0.2.99", name, password)
        assert status == 200


async def test_an_ipv6_guesser_counts_as_its_slash_64(login: Login) -> None:
    name, _ = login.user()
    statuses = [
        (await login.attempt(f"2001:db8:1:2::{i:x}", name, "wrong"))[0] for i in range(1, 12)
    ]
    assert statuses == [401] * 10 + [429]
    status, _ = await login.attempt("2001:db8:1:3::1", name, "wrong")
    assert status == 401  # another /64


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        # What an HTML form on any web page can send: text/plain that happens to be JSON.
        ("/api/v1/login", "text/plain", b'{"username":"ada","password":"=x"}\r\n'),
        ("/api/v1/login", "application/x-www-form-urlencoded", b'{"username":"ada"}'),
        ("/api/v1/login", "multipart/form-data; boundary=x", b"--x--\r\n"),
        ("/api/v1/login", None, b'{"username":"ada","password":"x"}'),
        ("/api/v1/login/oidc", "text/plain", b""),
        ("/api/v1/logout", "text/plain", b""),
        ("/file_request", "application/x-www-form-urlencoded", b'{"file_carve_guid": "x"}'),
        ("/api/v1/carves/abc/download-ticket", "text/plain", b"{}"),
    ],
)
async def test_every_post_must_say_it_sends_json(
    login: Login, path: str, content_type: str | None, body: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with login.http.post(login.url + path, data=body, headers=headers) as resp:
        status, answer = resp.status, orjson.loads(await resp.read())
    if content_type is None:
        # aiohttp sends application/octet-stream for raw bytes; what the server saw must be that.
        assert resp.request_info.headers.get("Content-Type") == "application/octet-stream"
    assert (status, answer["code"]) == (415, "unsupported_media_type"), answer
    assert "application/json" in answer["error"]
    # Refused before anything was read: no attempt was counted, nobody was looked up.
    status, _ = await login.attempt("127.0.0.1", "ada", "x")
    assert status == 401
    rows = await login.audit()
    assert all(r.get("display_name") in (None, "userpass-ada") for r in rows)
    assert [r["status"] for r in rows if r.get("display_name") == "userpass-ada"] == [401]


async def test_json_with_a_charset_is_json(login: Login) -> None:
    name, password = login.user()
    body = orjson.dumps({"username": name, "password": password})
    headers = {"Content-Type": "application/json; charset=utf-8"}
    async with login.http.post(login.url + "/api/v1/login", data=body, headers=headers) as resp:
        assert resp.status == 200
