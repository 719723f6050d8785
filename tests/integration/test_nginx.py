"""NGINX with the repository's own config in front of the real services, mutual TLS and all.

Debian's nginx runs ``deploy/compose/nginx/carve.conf.template`` rendered the way the official
nginx image renders it (envsubst of the ``NGINX_*`` variables, ``NGINX_CLIENT_MAX_BODY_SIZE``
from ``15-carve-body-size.envsh``), with certificates made by ``deploy/pki/make-dev-pki.sh``.
Behind it: an in-process ingest, assembler and download service on the session's Redis,
RabbitMQ, MongoDB stand-in and OpenBao, and a stand-in for Fleet that answers "fleet".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import ssl
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import pytest
import yarl
from aiohttp import web

from clients import carvectl
from clients.osquery_sim import (
    STATUS_DATA_POST_FAILED,
    CarveResult,
    block_body,
    build_synthetic_archive,
    carve,
    client_ssl_context,
    judge_reply,
    start_body,
)
from devstack import ROOT
from devstack.backends import Backends
from devstack.ports import HOST, free_port
from devstack.servers import Server
from devstack.vault import POLICY, VaultAdmin
from shared.protocol import max_block_body
from tests.stack import Stack

COMPOSE = ROOT / "deploy" / "compose"
TEMPLATE = COMPOSE / "nginx" / "carve.conf.template"
BODY_SIZE_SCRIPT = COMPOSE / "nginx" / "15-carve-body-size.envsh"
VAULT_INIT = COMPOSE / "vault" / "init.sh"
MAKE_PKI = ROOT / "deploy" / "pki" / "make-dev-pki.sh"
NGINX = "/usr/sbin/nginx"
# The nginx image's NGINX_ENVSUBST_FILTER, as deploy/compose/compose.yaml sets it.
ENVSUBST_FILTER = re.compile(r"^NGINX_")

# CARVE_MAX_BLOCK_SIZE of this test's deployment: small, so the limits are quick to reach.
BLOCK_MAX = 64 * 1024
CARVE_SIZE = 300_000  # five blocks of BLOCK_MAX
FAST_RETRIES = (0.01, 0.01)  # osquery 5.22+'s three attempts, without its 1 s and 4 s sleeps

# (start, continue) endpoints of the original server, of Fleet's /api/v1/ and of Fleet's current
# paths: NGINX sends all of them to the ingest.
CARVE_ENDPOINTS = [
    ("/start_uploads", "/upload_blocks"),
    ("/api/v1/osquery/carve/begin", "/api/v1/osquery/carve/block"),
    ("/api/osquery/carve/begin", "/api/osquery/carve/block"),
]

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# Certificates, rendering, processes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """What make-dev-pki.sh writes into one directory."""

    root: Path

    @property
    def ca(self) -> str:
        return str(self.root / "ca.pem")

    @property
    def crl(self) -> str:
        return str(self.root / "ca.crl")

    def device_ssl(self, server_ca: str | None = None) -> ssl.SSLContext:
        """A host holding this PKI's device certificate, trusting ``server_ca``."""
        return client_ssl_context(
            server_ca or self.ca, str(self.root / "device.pem"), str(self.root / "device.key")
        )

    def other_device_ssl(self, name: str) -> ssl.SSLContext:
        """A host holding ``devices/NAME.pem`` (``make-dev-pki.sh device NAME``)."""
        cert = self.root / "devices" / f"{name}.pem"
        return client_ssl_context(self.ca, str(cert), str(cert.with_suffix(".key")))


def make_pki(outdir: Path, server_name: str = "carves.test") -> Pki:
    subprocess.run(["bash", str(MAKE_PKI), str(outdir), server_name], check=True, timeout=60)
    return Pki(outdir)


def pki_command(pki: Pki, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``make-dev-pki.sh COMMAND [ARGS] OUTDIR`` (device NAME, revoke NAME, crl)."""
    return subprocess.run(
        ["bash", str(MAKE_PKI), command, *args, str(pki.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def derived_body_size(block_max: int) -> int:
    """NGINX_CLIENT_MAX_BODY_SIZE as the image's entrypoint gets it from the .envsh script."""
    done = subprocess.run(
        ["sh", "-c", '. "$1" && printf %s "$NGINX_CLIENT_MAX_BODY_SIZE"', "sh", BODY_SIZE_SCRIPT],
        env={"PATH": os.environ["PATH"], "CARVE_MAX_BLOCK_SIZE": str(block_max)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def render(template: str, env: Mapping[str, str]) -> str:
    """What the nginx image's 20-envsubst-on-templates.sh does with a template.

    It runs ``envsubst`` with the list of defined variables whose names match
    NGINX_ENVSUBST_FILTER: ``$NAME`` and ``${NAME}`` of those are replaced, every other
    ``$...`` (NGINX's own variables) is left alone.
    """
    names = {name for name in env if ENVSUBST_FILTER.search(name)}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env[name] if name in names else match.group(0)

    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", substitute, template)


def main_conf(workdir: Path, log_level: str = "notice") -> str:
    """The parts of the image's nginx.conf that matter, with every path inside ``workdir``."""
    # As root NGINX's workers would run as nobody, who cannot enter pytest's 0700 directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {workdir / 'nginx.pid'};\nerror_log stderr {log_level};\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        f"    access_log {workdir / 'access.log'};\n{temp}\n"
        "    default_type application/octet-stream;\n"
        f"    include {workdir / 'carve.conf'};\n"
        "}\n"
    )


class NginxServer(Server):
    """Debian's nginx as a child process: the osquery listener is ``port``."""

    name = "nginx"
    start_timeout = 15.0

    def __init__(self, workdir: Path, env: Mapping[str, str], log_level: str = "notice") -> None:
        super().__init__(workdir)
        self.responder_port = free_port()
        self.health_port = free_port()
        self.env_vars = {
            **env,
            "NGINX_OSQUERY_LISTEN": f"{HOST}:{self.port}",
            "NGINX_RESPONDER_LISTEN": f"{HOST}:{self.responder_port}",
            "NGINX_HEALTH_LISTEN": f"{HOST}:{self.health_port}",
            "NGINX_ACCESS_LOG": str(workdir / "access.log"),
        }
        site = render(TEMPLATE.read_text(), self.env_vars)
        assert "${" not in site, "a template variable was left unset"
        (workdir / "carve.conf").write_text(site)
        (workdir / "nginx.conf").write_text(main_conf(workdir, log_level))

    def command(self) -> list[str]:
        conf = self.workdir / "nginx.conf"
        return [
            NGINX,
            "-p",
            f"{self.workdir}/",
            "-c",
            str(conf),
            "-e",
            "stderr",
            "-g",
            "daemon off;",
        ]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FleetStandIn:
    """Answers every request with 200 "fleet" and remembers it."""

    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        return web.Response(text="fleet")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@dataclass
class Front:
    """NGINX and what stands behind it, as seen from outside."""

    nginx: NginxServer
    pki: Pki
    fleet: FleetStandIn

    @property
    def osquery_url(self) -> str:
        return f"https://{HOST}:{self.nginx.port}"

    @property
    def responder_url(self) -> str:
        return f"https://{HOST}:{self.nginx.responder_port}"

    @property
    def health_url(self) -> str:
        return f"http://{HOST}:{self.nginx.health_port}"

    def device_ssl(self) -> ssl.SSLContext:
        return self.pki.device_ssl()

    def server_only_ssl(self) -> ssl.SSLContext:
        """A client that checks the server and holds no certificate of its own."""
        return client_ssl_context(self.pki.ca, None, None)


MakeFront = Callable[[str], Awaitable[Front]]


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The organisation's development PKI: CA, NGINX's server certificate, one device."""
    return make_pki(tmp_path_factory.mktemp("pki") / "org")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA with a device certificate of its own: not the organisation's."""
    return make_pki(tmp_path_factory.mktemp("pki") / "stranger")


def nginx_env(
    pki: Pki, ingest: str, download: str, fleet: str, vault: str, block_max: int = BLOCK_MAX
) -> dict[str, str]:
    """The template's NGINX_* variables for this PKI and these upstreams (``host:port``)."""
    return {
        "NGINX_SERVER_NAME": "carves.test",
        "NGINX_TLS_CERT": str(pki.root / "server.pem"),
        "NGINX_TLS_KEY": str(pki.root / "server.key"),
        "NGINX_CLIENT_CA": pki.ca,
        "NGINX_CLIENT_CRL": pki.crl,
        "NGINX_INGEST_UPSTREAM": ingest,
        "NGINX_DOWNLOAD_UPSTREAM": download,
        "NGINX_FLEET_UPSTREAM": fleet,
        "NGINX_VAULT_UPSTREAM": vault,
        "NGINX_CLIENT_MAX_BODY_SIZE": str(derived_body_size(block_max)),
    }


async def serve_app(exits: contextlib.AsyncExitStack, app: web.Application) -> str:
    """Runs ``app`` on a free loopback port until ``exits`` closes; returns ``host:port``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    exits.push_async_callback(runner.cleanup)
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    return f"{HOST}:{port}"


async def open_front(
    exits: contextlib.AsyncExitStack,
    stack: Stack,
    vault: VaultAdmin,
    pki: Pki,
    workdir: Path,
    ingest_url: str,
    log_level: str = "notice",
) -> Front:
    """An NGINX with ``pki``'s certificates in front of ``ingest_url``, a download service, a
    Fleet stand-in and ``vault``; stopped when ``exits`` closes."""
    download = await stack.start_download()
    fleet = FleetStandIn()
    fleet_address = await serve_app(exits, fleet.app())
    env = nginx_env(
        pki,
        ingest=ingest_url.removeprefix("http://"),
        download=download.url.removeprefix("http://"),
        fleet=fleet_address,
        vault=vault.url.removeprefix("http://"),
    )
    # Defined, but filtered out: NGINX's own $http_host must survive the rendering.
    env["http_host"] = "not-for-envsubst"
    nginx = NginxServer(workdir / f"nginx-{uuid.uuid4().hex[:6]}", env, log_level)
    exits.callback(nginx.stop)
    nginx.start()
    return Front(nginx, pki, fleet)


@pytest.fixture
async def fronts(
    stack: Stack, vault: VaultAdmin, pki: Pki, tmp_path: Path
) -> AsyncIterator[MakeFront]:
    """Starts an NGINX (with a download service and a Fleet stand-in) before a given ingest."""
    async with contextlib.AsyncExitStack() as exits:

        async def make(ingest_url: str) -> Front:
            return await open_front(exits, stack, vault, pki, tmp_path, ingest_url)

        yield make


@pytest.fixture
async def front(stack: Stack, fronts: MakeFront) -> Front:
    """The deployment as compose configures it: the ingest's limit is NGINX's block size."""
    ingest = await stack.start_ingest(max_block_size=BLOCK_MAX)
    return await fronts(ingest.url)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def archive_for(tmp_path: Path, size: int = CARVE_SIZE) -> tuple[str, Path]:
    guid = str(uuid.uuid4())
    return guid, build_synthetic_archive(size, tmp_path / guid, carve_guid=guid, seed=size)


async def device_carve(
    front: Front, http: aiohttp.ClientSession, archive: Path, guid: str, **options: Any
) -> CarveResult:
    """One osquery host carving through NGINX's device listener: full-size blocks and the
    device certificate, unless ``options`` say otherwise."""
    settings = {"block_size": BLOCK_MAX, "ssl": front.device_ssl(), **options}
    return await carve(http, front.osquery_url, archive, carve_id=guid, **settings)


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, ssl_context: ssl.SSLContext
) -> tuple[int, str, bytes]:
    async with http.post(url, data=body, ssl=ssl_context) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


@contextlib.contextmanager
def simulator_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="clients.osquery_sim"):
        yield caplog


# ---------------------------------------------------------------------------------------------
# (a) a host with a device certificate carves through NGINX
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "block"), CARVE_ENDPOINTS)
async def test_a_device_carves_through_nginx_with_its_certificate(
    front: Front,
    stack: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    start: str,
    block: str,
) -> None:
    guid, archive = archive_for(tmp_path)
    # Full-size blocks: the largest body the derived limit must admit.
    result = await device_carve(
        front, http, archive, guid, start_endpoint=start, continue_endpoint=block
    )
    assert result.ok, result
    assert result.requests == 1 + result.block_count == 6
    doc = await stack.wait_complete(guid)
    assert doc["sha256"] == result.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert await stack.stored_sha256(guid) == result.sha256
    assert front.fleet.seen == [], "carving requests must never reach Fleet"


# ---------------------------------------------------------------------------------------------
# (b), (c) no certificate, or one from another CA: refused before anything is reached
# ---------------------------------------------------------------------------------------------


async def carve_refused_at_the_edge(
    front: Front,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> str:
    """A simulated carve that NGINX refuses; its guid, once osquery's verdict is checked."""
    guid, archive = archive_for(tmp_path)
    with simulator_log(caplog):
        result = await device_carve(
            front, http, archive, guid, ssl=ssl_context, retry_sleeps=FAST_RETRIES
        )
    # NGINX's refusal is an HTML page: not JSON, so osquery 5.22+ tries three times, then fails
    # with DATA POST FAILED and no session.
    assert result.start_failed
    assert result.requests == 3
    assert "HTTP 400, non-JSON" in caplog.text
    return guid


async def assert_refused_like_osquery_sees_it(
    front: Front,
    stack: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> bytes:
    guid = await carve_refused_at_the_edge(front, http, tmp_path, ssl_context, caplog)
    status, content_type, body = await post(
        http, front.osquery_url + "/start_uploads", b"{}", ssl_context
    )
    assert status == 400
    assert content_type.startswith("text/html")
    assert not judge_reply(status, body).ok
    # Nothing got through: no carve, and Fleet saw nothing either.
    async with http.get(front.osquery_url + "/api/osquery/config", ssl=ssl_context) as resp:
        assert resp.status == 400
    assert await stack.carve_doc(guid) is None
    assert front.fleet.seen == []
    return body


async def test_a_host_without_a_certificate_is_refused(
    front: Front,
    stack: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = await assert_refused_like_osquery_sees_it(
        front, stack, http, tmp_path, front.server_only_ssl(), caplog
    )
    assert b"No required SSL certificate was sent" in body


async def test_a_certificate_from_another_ca_is_refused(
    front: Front,
    stranger: Pki,
    stack: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A genuine device certificate, from a CA that is not the organisation's.
    ssl_context = stranger.device_ssl(server_ca=front.pki.ca)
    body = await assert_refused_like_osquery_sees_it(
        front, stack, http, tmp_path, ssl_context, caplog
    )
    assert b"The SSL certificate error" in body


# ---------------------------------------------------------------------------------------------
# (d) the block size: what osquery sees when NGINX's limit is too small, and why it is derived
# ---------------------------------------------------------------------------------------------


async def test_a_block_over_client_max_body_size_fails_the_carve_with_html_413(
    fronts: MakeFront,
    stack: Stack,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A mismatched deployment: the ingest takes blocks up to its default 8 MiB, NGINX's limit
    # was derived from 64 KiB. The start passes; every block is NGINX's to refuse.
    front = await fronts(stack.ingest_url)
    limit = derived_body_size(BLOCK_MAX)
    guid, archive = archive_for(tmp_path)
    big_block = 2 * BLOCK_MAX
    assert (
        max_block_body(BLOCK_MAX) == limit < len(block_body(0, "s" * 32, guid, b"\0" * big_block))
    )
    with simulator_log(caplog):
        result = await device_carve(
            front, http, archive, guid, block_size=big_block, retry_sleeps=FAST_RETRIES
        )
    # osquery 5.22+: block 0 answered with HTML three times, the carve ends DATA POST FAILED.
    assert result.status == STATUS_DATA_POST_FAILED
    assert result.failed_blocks == [0]
    assert result.requests == 1 + 3
    assert result.error_replies == []  # never a JSON answer: the ingest never saw a block
    assert "block 0 failed: HTTP 413, non-JSON" in caplog.text
    doc = await stack.carve_doc(guid)
    assert doc is not None and doc["status"] == "receiving"
    assert await stack.chunk_count(guid) == 0
    # The reply itself, as osquery gets it.
    body = block_body(0, "s" * 32, guid, b"\0" * big_block)
    status, content_type, reply = await post(
        http, front.osquery_url + "/upload_blocks", body, front.device_ssl()
    )
    assert status == 413
    assert content_type.startswith("text/html")
    assert not judge_reply(status, reply).ok


async def test_with_the_derived_limit_an_oversized_block_size_is_refused_at_the_start(
    front: Front, stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # As compose deploys it (one CARVE_MAX_BLOCK_SIZE for both), a host whose carver_block_size
    # is too large is told so by the ingest at its start request, in JSON: osquery gives up at
    # once instead of retrying block after block.
    guid, archive = archive_for(tmp_path)
    result = await device_carve(
        front, http, archive, guid, block_size=BLOCK_MAX + 1, retry_sleeps=FAST_RETRIES
    )
    assert result.start_failed
    assert result.requests == 1
    assert await stack.carve_doc(guid) is None
    # The reply osquery got: the ingest's JSON, through NGINX.
    size = archive.stat().st_size
    body = start_body(
        block_count=-(-size // (BLOCK_MAX + 1)),
        block_size=BLOCK_MAX + 1,
        carve_size=size,
        carve_id=guid,
        request_id=str(uuid.uuid4()),
        node_key="",
    )
    status, content_type, reply = await post(
        http, front.osquery_url + "/start_uploads", body, front.device_ssl()
    )
    assert (status, content_type) == (413, "application/json; charset=utf-8")
    assert judge_reply(status, reply).payload["success"] is False


# ---------------------------------------------------------------------------------------------
# (e) responders: the download API and carvectl through the responder listener
# ---------------------------------------------------------------------------------------------


async def upload(
    front: Front, stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> CarveResult:
    guid, archive = archive_for(tmp_path)
    result = await device_carve(front, http, archive, guid)
    assert result.ok, result
    await stack.wait_complete(guid)
    return result


def vault_init(backends: Backends, username: str, password: str) -> str:
    """deploy/compose/vault/init.sh against the session's OpenBao, as vault-init runs it."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # bao
        "HOME": str(backends.vault.workdir),
        "BAO_ADDR": backends.vault.url,
        "BAO_TOKEN": backends.vault.root_token,
        "POLICY_DIR": str(ROOT / "deploy" / "vault"),
        "RESPONDER_USERNAME": username,
        "RESPONDER_PASSWORD": password,
    }
    done = subprocess.run(
        ["sh", str(VAULT_INIT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def run_carvectl(home: Path, env: Mapping[str, str], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return carvectl.run(["--quiet", *argv], env={"XDG_CONFIG_HOME": str(home), **env})

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_carvectl_logs_in_and_downloads_through_the_responder_listener(
    front: Front,
    stack: Stack,
    backends: Backends,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    carved = await upload(front, stack, http, tmp_path)
    username, password = f"ann-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    printed = vault_init(backends, username, password)
    assert f"userpass login '{username}'" in printed
    admin = hvac.Client(url=backends.vault.url, token=backends.vault.root_token)
    assert "path" in admin.sys.read_policy("osquery-file-carve-admin")["data"]["rules"]
    # The responder has no device certificate: only the server's CA, and a Vault login that
    # goes through the same listener.
    home = tmp_path / "home"
    env = {
        "VAULT_ADDR": front.responder_url,
        "VAULT_CACERT": front.pki.ca,
        "CARVECTL_PASSWORD": password,
        "CARVECTL_SERVER": front.responder_url,
        "CARVECTL_CACERT": front.pki.ca,
    }
    code, _, err = await run_carvectl(home, env, "login", "--username", username)
    assert code == 0, err
    code, out, err = await run_carvectl(home, env, "--json", "list")
    assert code == 0, err
    assert [c["carve_id"] for c in json.loads(out)] == [carved.carve_id]
    target = tmp_path / "evidence.tar"
    code, _, err = await run_carvectl(
        home, env, "get", carved.carve_id, "-o", str(target), "--expect-sha256", carved.sha256
    )
    assert code == 0, err
    assert hashlib.sha256(target.read_bytes()).hexdigest() == carved.sha256


async def test_wrong_passwords_through_the_responder_listener_lock_nobody_out(
    front: Front, backends: Backends, http: aiohttp.ClientSession
) -> None:
    """Vault's own user lockout (5 failures, whoever sent them, 15 minutes) would let anyone
    who reaches the login lock a responder out; vault-init turns it off on the userpass mount
    (guessing is bounded by NGINX per address and by the download service's limits)."""
    admin = hvac.Client(url=backends.vault.url, token=backends.vault.root_token)
    lockout_on = {"user_lockout_config": {"lockout_disable": False, "lockout_threshold": 5}}
    admin.write_data("sys/auth/userpass/tune", data=lockout_on)  # as a fresh Vault has it
    username, password = f"bea-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    vault_init(backends, username, password)
    tls = front.server_only_ssl()
    url = f"{front.responder_url}/v1/auth/userpass/login/{username}"
    for _ in range(6):  # from an attacker's address: NGINX lets 10 through at once
        async with http.post(url, json={"password": "wrong"}, ssl=tls) as resp:
            assert resp.status == 400, await resp.text()
    async with http.post(url, json={"password": password}, ssl=tls) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["auth"]["client_token"]


async def test_download_api_on_the_responder_listener_needs_a_token_not_a_certificate(
    front: Front,
    stack: Stack,
    vault: VaultAdmin,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    carved = await upload(front, stack, http, tmp_path)
    archive = (tmp_path / carved.carve_id / f"carve_{carved.carve_id}.tar").read_bytes()
    token = vault.token(POLICY)
    tls = front.server_only_ssl()
    base = front.responder_url + "/api/v1/carves"
    # No token: the download service itself answers (JSON 401), NGINX let the request through.
    async with http.get(base, ssl=tls) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "unauthorized"
    headers = {"X-Vault-Token": token.token}
    async with http.get(base, ssl=tls, headers=headers) as resp:
        assert resp.status == 200
        assert [c["carve_id"] for c in (await resp.json())["carves"]] == [carved.carve_id]
    # Ranges and ETags pass through NGINX untouched.
    url = f"{base}/{carved.carve_id}/archive"
    async with http.get(url, ssl=tls, headers={**headers, "Range": "bytes=1000-1999"}) as resp:
        assert resp.status == 206
        assert await resp.read() == archive[1000:2000]
        assert resp.headers["ETag"] == f'"{carved.sha256}"'
    # The original server's curl command.
    request = {"file_carve_guid": carved.carve_id, "token": token.token}
    async with http.post(front.responder_url + "/file_request", json=request, ssl=tls) as resp:
        assert resp.status == 200
        assert hashlib.sha256(await resp.read()).hexdigest() == carved.sha256
    # The summary counts, the campaign and its ZIP, streamed through NGINX.
    api = front.responder_url + "/api/v1"
    async with http.get(f"{api}/summary", ssl=tls, headers=headers) as resp:
        assert (resp.status, (await resp.json())["counts"]["complete"]) == (200, 1)
    async with http.get(f"{api}/requests/{carved.request_id}", ssl=tls, headers=headers) as resp:
        assert (resp.status, (await resp.json())["carve_count"]) == (200, 1)
    async with http.get(
        f"{api}/requests/{carved.request_id}/export", ssl=tls, headers=headers
    ) as resp:
        assert resp.status == 200
        with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
            (name,) = [n for n in zf.namelist() if n.startswith("carves/")]
            assert hashlib.sha256(zf.read(name)).hexdigest() == carved.sha256
    # The same API on the osquery listener, for callers holding a device certificate.
    async with http.get(base, ssl=front.device_ssl(), headers=headers) as resp:
        assert resp.status == 200
    # The download service audited what came through NGINX.
    rows = await stack.db["audit"].find({"carve_id": carved.carve_id}).to_list()
    assert {r["action"] for r in rows} >= {"archive", "file_request"}
    assert front.fleet.seen == []


async def test_download_tickets_stay_out_of_the_access_log(
    front: Front,
    stack: Stack,
    vault: VaultAdmin,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    carved = await upload(front, stack, http, tmp_path)
    headers = {"X-Vault-Token": vault.token(POLICY).token}
    base = f"/api/v1/carves/{carved.carve_id}"
    tickets = []
    for listener, tls in (
        (front.responder_url, front.server_only_ssl()),
        (front.osquery_url, front.device_ssl()),
    ):
        async with http.post(
            f"{listener}{base}/download-ticket", json={}, headers=headers, ssl=tls
        ) as resp:
            minted = await resp.json()
        tickets.append(minted["ticket"])
        async with http.get(listener + minted["url"], ssl=tls) as resp:
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).hexdigest() == carved.sha256
        # Percent-encoded, a ticket would slip past a plain "ticket=" match: not logged either.
        async with http.get(
            yarl.URL(f"{listener}{base}/archive?%74icket={minted['ticket']}", encoded=True),
            ssl=tls,
        ) as resp:
            assert resp.status == 403  # the service decodes it: a ticket, used already
        async with http.get(
            f"{listener}/api/v1/carves?status=complete&limit=5", headers=headers, ssl=tls
        ) as resp:
            assert resp.status == 200
    log = (front.nginx.workdir / "access.log").read_text()
    for ticket in tickets:
        assert ticket not in log
    lines = [line for line in log.splitlines() if base + "/archive" in line]
    assert len(lines) == 4, log
    assert all(f"{base}/archive?[not logged: may hold a download ticket]" in x for x in lines)
    # Other query strings are logged as the image logs them.
    assert log.count('"GET /api/v1/carves?status=complete&limit=5 HTTP/1.1" 200') == 2


async def test_responder_listener_reaches_neither_osquery_paths_nor_fleet_nor_all_of_vault(
    front: Front, stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    guid, archive = archive_for(tmp_path)
    tls = front.server_only_ssl()
    # Carving needs a device certificate: these paths do not exist on the responder listener.
    for path in ("/start_uploads", "/api/v1/osquery/carve/begin", "/api/osquery/carve/begin"):
        result = await carve(
            http,
            front.responder_url,
            archive,
            block_size=BLOCK_MAX,
            carve_id=guid,
            start_endpoint=path,
            ssl=tls,
            retry_sleeps=FAST_RETRIES,
        )
        assert result.start_failed
        assert result.requests == 1  # a JSON 404: osquery gives up at once
    assert await stack.carve_doc(guid) is None
    # The responder console is served here (and / redirects to it), with its own headers.
    async with http.get(front.responder_url + "/", ssl=tls, allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (302, "/ui/")
    async with http.get(front.responder_url + "/ui/app.js", ssl=tls) as resp:
        assert (
            resp.status == 200
            and "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        )
    for method, path in [
        ("POST", "/api/osquery/enroll"),
        ("GET", "/v1/sys/health"),
        ("GET", "/v1/secret/data/x"),
        ("GET", "/healthz"),
    ]:
        async with http.request(method, front.responder_url + path, ssl=tls) as resp:
            assert resp.status == 404, path
            assert (await resp.json())["code"] == "not_found"
    assert front.fleet.seen == []


# ---------------------------------------------------------------------------------------------
# (f) everything else on the osquery listener is Fleet's
# ---------------------------------------------------------------------------------------------


async def test_everything_else_on_the_osquery_listener_goes_to_fleet(
    front: Front, http: aiohttp.ClientSession
) -> None:
    tls = front.device_ssl()
    requests = [
        ("POST", "/api/osquery/enroll", b'{"enroll_secret":"x","host_identifier":"h"}'),
        ("POST", "/api/v1/osquery/config", b'{"node_key":"k"}'),
        ("POST", "/api/v1/osquery/distributed/read", b'{"node_key":"k"}'),
        ("POST", "/api/v1/osquery/log", b'{"node_key":"k","log_type":"result","data":[]}'),
        ("GET", "/api/v1/fleet/hosts?per_page=5", b""),
        ("GET", "/", b""),
        # Close to the carving paths, but not them.
        ("POST", "/start_uploads/x", b"{}"),
        ("POST", "/api/v1/osquery/carve/begin/x", b"{}"),
    ]
    for method, path, body in requests:
        async with http.request(method, front.osquery_url + path, data=body, ssl=tls) as resp:
            assert resp.status == 200, path
            assert await resp.text() == "fleet"
    assert [(s.method, s.path, s.body) for s in front.fleet.seen] == requests
    for seen in front.fleet.seen:
        assert seen.headers["X-Forwarded-Proto"] == "https"
        assert seen.headers["Host"] == f"{HOST}:{front.nginx.port}"
        assert seen.headers["X-Forwarded-For"] == HOST


async def test_health_listener_answers_for_the_container_healthcheck(
    front: Front, http: aiohttp.ClientSession
) -> None:
    async with http.get(front.health_url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok\n"


def test_the_rendered_config_uses_the_derived_body_size_and_passes_nginx_t(
    pki: Pki, tmp_path: Path
) -> None:
    env = nginx_env(
        pki, "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", block_max=1024 * 1024
    )
    nginx = NginxServer(tmp_path / "nginx", env)
    site = (nginx.workdir / "carve.conf").read_text()
    assert re.findall(r"client_max_body_size (\S+);", site)[0] == f"{max_block_body(1 << 20)}"
    # NGINX's own variables survive the rendering.
    assert "$http_host" in site and "$remote_addr" in site and "$http_upgrade" in site
    checked = subprocess.run(
        [*nginx.command()[:-2], "-t"], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr


def test_make_dev_pki_refuses_a_directory_git_would_commit() -> None:
    target = ROOT / "deploy" / "pki" / f"keys-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        ["bash", str(MAKE_PKI), str(target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "not ignored" in done.stderr
    assert not target.exists()


def test_make_dev_pki_certificates(pki: Pki, stranger: Pki) -> None:
    def text(path: Path) -> str:
        done = subprocess.run(
            ["openssl", "x509", "-in", str(path), "-noout", "-text"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    server = text(pki.root / "server.pem")
    assert "DNS:localhost, IP Address:127.0.0.1, DNS:carves.test" in server
    assert "TLS Web Server Authentication" in server
    assert "TLS Web Client Authentication" in text(pki.root / "device.pem")
    for key in ("ca.key", "server.key", "device.key"):
        assert (pki.root / key).stat().st_mode & 0o077 == 0, key
    # Two runs, two CAs: the stranger's device does not verify against the organisation's CA.
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", pki.ca, str(stranger.root / "device.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode != 0
    assert (pki.root / "ca.pem").read_bytes() != (stranger.root / "ca.pem").read_bytes()
