"""NGINX and the device's identity: revocation, the certificate passed upstream, TLS 1.2 ciphers.

The same rendering of ``deploy/compose/nginx/carve.conf.template`` and the same PKI script as
tests/integration/test_nginx.py (whose helpers these tests use), with Debian's nginx:

- a device revoked with ``make-dev-pki.sh revoke NAME`` is refused once NGINX reloads, the way
  osquery sees a TLS refusal, while another device of the same CA still carves;
- NGINX passes the verified certificate upstream exactly as ingress-nginx does
  (``auth-tls-pass-certificate-to-upstream``), and a client can never set those headers itself;
- TLS 1.2 offers only ECDHE key exchange with AEAD ciphers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from clients.osquery_sim import (
    block_body,
    client_ssl_context,
    judge_reply,
    start_body,
)
from devstack.ports import HOST
from devstack.vault import VaultAdmin
from services.ingest.routes import BLOCK_PATHS, START_PATHS
from tests.integration.test_nginx import (
    MAKE_PKI,
    Front,
    NginxServer,
    Pki,
    archive_for,
    carve_refused_at_the_edge,
    device_carve,
    make_pki,
    nginx_env,
    open_front,
    pki_command,
    post,
    serve_app,
)
from tests.stack import Stack

pytestmark = pytest.mark.timeout(90)

LOST = "lost-laptop"
# The request headers NGINX sets from the TLS session, named and filled as ingress-nginx's
# nginx.tmpl does it (auth-tls-pass-certificate-to-upstream: "true").
IDENTITY_HEADERS = ("ssl-client-cert", "ssl-client-verify", "ssl-client-subject-dn")
ISSUER_HEADER = "ssl-client-issuer-dn"


def rfc2253(cert: Path, which: str) -> str:
    """The certificate's subject or issuer as openssl prints it in RFC 2253 form (the form of
    NGINX's $ssl_client_s_dn and $ssl_client_i_dn)."""
    done = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", f"-{which}", "-nameopt", "RFC2253"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().removeprefix(f"{which}=")


# ---------------------------------------------------------------------------------------------
# Revocation
# ---------------------------------------------------------------------------------------------


def reload_nginx(nginx: NginxServer) -> None:
    """``nginx -s reload``: SIGHUP to the master; returns once only new workers accept
    connections (the old ones have closed their listening sockets)."""
    assert nginx.proc is not None
    before = nginx.log_path.read_text(errors="replace")
    nginx.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = nginx.log_path.read_text(errors="replace")[len(before) :]
        started = after.find("start worker process")
        if "reconfiguring" in after and "gracefully shutting down" in after[max(started, 0) :]:
            return
        time.sleep(0.05)
    raise AssertionError(f"nginx did not reload:\n{after[-2000:]}")


async def start_status(front: Front, tls: ssl.SSLContext, guid: str) -> tuple[int, str, bytes]:
    """One start request on a fresh connection (no pooled connection from before a reload)."""
    body = json.dumps(
        {
            "block_count": 1,
            "block_size": 1024,
            "carve_size": 10,
            "carve_id": guid,
            "request_id": guid,
            "node_key": "",
        }
    ).encode()
    async with aiohttp.ClientSession() as fresh:
        return await post(fresh, front.osquery_url + "/start_uploads", body, tls)


async def test_a_revoked_device_is_refused_after_reload_and_the_others_still_carve(
    stack: Stack,
    vault: VaultAdmin,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pki = make_pki(tmp_path / "org")
    issued = pki_command(pki, "device", LOST)
    assert issued.returncode == 0, issued.stderr
    lost, kept = pki.other_device_ssl(LOST), pki.device_ssl()
    ingest = await stack.start_ingest(max_block_size=64 * 1024)
    async with contextlib.AsyncExitStack() as exits:
        # "info": NGINX logs why it refused a client certificate at that level.
        front = await open_front(exits, stack, vault, pki, tmp_path, ingest.url, "info")
        # With the empty CRL both devices carve.
        async with aiohttp.ClientSession() as http:
            for tls in (lost, kept):
                guid, archive = archive_for(tmp_path)
                result = await device_carve(front, http, archive, guid, ssl=tls)
                assert result.ok, result
                assert (await stack.wait_complete(guid))["sha256"] == result.sha256

        revoked = pki_command(pki, "revoke", LOST)
        assert revoked.returncode == 0, revoked.stderr
        listed = crl_text(pki)
        assert f"Serial Number: {serial_of(pki.root / 'devices' / f'{LOST}.pem')}" in listed
        assert "Key Compromise" in listed

        # NGINX read the CRL when it started: until it reloads, the lost device still gets in.
        status, _, reply = await start_status(front, lost, "before-reload")
        assert status == 200 and judge_reply(status, reply).ok

        await asyncio.to_thread(reload_nginx, front.nginx)
        async with aiohttp.ClientSession() as http:
            guid = await carve_refused_at_the_edge(front, http, tmp_path, lost, caplog)
        assert await stack.carve_doc(guid) is None
        status, content_type, body = await start_status(front, lost, "after-reload")
        assert (status, content_type.split(";")[0]) == (400, "text/html")
        assert b"The SSL certificate error" in body
        # Refused by the certificate check, for the revocation: NGINX's own words.
        log = front.nginx.log_path.read_text(errors="replace")
        assert "client SSL certificate verify error: (23:certificate revoked)" in log

        # The other device of the same CA still carves end to end, byte for byte.
        guid, archive = archive_for(tmp_path)
        async with aiohttp.ClientSession() as http:
            result = await device_carve(front, http, archive, guid, ssl=kept)
        assert result.ok, result
        doc = await stack.wait_complete(guid)
        expected = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert doc["sha256"] == result.sha256 == expected
        assert await stack.stored_sha256(guid) == expected
        assert front.fleet.seen == []


def request_on_new_connection(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[int, ssl.SSLSession | None, bool]:
    """One HTTP request on its own TLS connection, offering ``session`` for resumption:
    (HTTP status, the connection's session, whether the server resumed the offered one)."""
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST, session=session) as tls,
    ):
        tls.sendall(b"POST /start_uploads HTTP/1.1\r\nHost: carves.test\r\n")
        tls.sendall(b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
        return int(reply.split(b" ", 2)[1]), tls.session, bool(tls.session_reused)


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
async def test_a_revoked_device_cannot_resume_a_tls_session_from_before(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """A resumed TLS session skips the certificate check, and NGINX's session cache survives
    a reload: with resumption, a device revoked after its session was cached kept getting in
    for ssl_session_timeout (1 h). The osquery listener offers no resumption at all."""
    pki = make_pki(tmp_path / "org")
    assert pki_command(pki, "device", LOST).returncode == 0
    async with contextlib.AsyncExitStack() as exits:
        ingest = Echo()
        upstream = await serve_app(exits, ingest.app())
        nginx = NginxServer(
            tmp_path / "nginx", nginx_env(pki, upstream, upstream, upstream, upstream)
        )
        exits.callback(nginx.stop)
        nginx.start()
        # One context for the whole test: Python resumes sessions only within their context.
        context = ssl.create_default_context(cafile=pki.ca)
        context.maximum_version = version
        cert = pki.root / "devices" / f"{LOST}.pem"
        context.load_cert_chain(str(cert), str(cert.with_suffix(".key")))
        call = asyncio.to_thread
        status, session, _ = await call(request_on_new_connection, nginx.port, context)
        assert status == 200 and session is not None
        status, _, resumed = await call(request_on_new_connection, nginx.port, context, session)
        assert (status, resumed) == (200, False), "the listener must not resume sessions"
        assert pki_command(pki, "revoke", LOST).returncode == 0
        await asyncio.to_thread(reload_nginx, nginx)
        status, _, resumed = await call(request_on_new_connection, nginx.port, context, session)
        assert (status, resumed) == (400, False)
        assert len(ingest.seen) == 2, "nothing reached the ingest after the revocation"


def test_revoke_refuses_unknown_names_and_a_second_revocation(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "org")
    crl = Path(pki.crl).read_bytes()
    unknown = pki_command(pki, "revoke", "never-issued")
    assert unknown.returncode != 0
    assert "no valid certificate with the common name 'never-issued'" in unknown.stderr
    bad = pki_command(pki, "revoke", "../ca")
    assert bad.returncode != 0 and "NAME may hold" in bad.stderr
    assert Path(pki.crl).read_bytes() == crl, "nothing changed"
    assert pki_command(pki, "revoke", "osquery-device").returncode == 0
    again = pki_command(pki, "revoke", "osquery-device")
    assert again.returncode != 0
    # The revoked device no longer verifies against the CA and its CRL; the server still does.
    verify = [
        "openssl",
        "verify",
        "-CAfile",
        pki.ca,
        "-CRLfile",
        pki.crl,
        "-crl_check",
    ]
    device = subprocess.run([*verify, str(pki.root / "device.pem")], capture_output=True)
    assert device.returncode != 0 and b"certificate revoked" in device.stdout + device.stderr
    server = subprocess.run([*verify, str(pki.root / "server.pem")], capture_output=True)
    assert server.returncode == 0


def crl_text(pki: Pki) -> str:
    done = subprocess.run(
        ["openssl", "crl", "-in", pki.crl, "-CAfile", pki.ca, "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "verify OK" in done.stderr, "the CRL is signed by the CA"
    return done.stdout


def serial_of(cert: Path) -> str:
    done = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-serial"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().removeprefix("serial=")


def test_the_pki_always_has_a_crl_and_a_database_of_what_it_issued(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "org")
    assert (Path(pki.crl).stat().st_mode & 0o777) == 0o644
    text = crl_text(pki)
    assert "No Revoked Certificates." in text
    index = (pki.root / "ca-db" / "index.txt").read_text().splitlines()
    rows = [line.split("\t") for line in index]
    assert [(r[0], r[3], r[5].rsplit("/CN=", 1)[1]) for r in rows] == [
        ("V", serial_of(pki.root / "server.pem"), "carves.test"),
        ("V", serial_of(pki.root / "device.pem"), "osquery-device"),
    ]
    # CRL_DAYS: how long NGINX accepts the CRL; `crl` issues a fresh one.
    renewed = subprocess.run(
        ["bash", str(MAKE_PKI), "crl", str(pki.root)],
        env={**os.environ, "CRL_DAYS": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert renewed.returncode == 0, renewed.stderr
    next_update = subprocess.run(
        ["openssl", "crl", "-in", pki.crl, "-noout", "-nextupdate"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    when = datetime.strptime(next_update.removeprefix("nextUpdate="), "%b %d %H:%M:%S %Y GMT")
    left = when.replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(days=1, hours=23) < left <= timedelta(days=2)
    assert crl_text(pki) != text, "a new CRL number"
    bad = subprocess.run(
        ["bash", str(MAKE_PKI), "crl", str(pki.root)],
        env={**os.environ, "CRL_DAYS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "CRL_DAYS" in bad.stderr


def test_a_pki_made_before_the_ca_database_is_adopted_and_can_revoke(tmp_path: Path) -> None:
    # What the earlier make-dev-pki.sh left: certificates, no ca-db/, no ca.crl.
    pki = make_pki(tmp_path / "org")
    shutil.rmtree(pki.root / "ca-db")
    Path(pki.crl).unlink()
    before = {p.name: p.read_bytes() for p in pki.root.glob("*.pem")}
    again = make_pki(pki.root)
    assert {p.name: p.read_bytes() for p in again.root.glob("*.pem")} == before, "kept"
    assert "No Revoked Certificates." in crl_text(again)
    assert pki_command(again, "revoke", "osquery-device").returncode == 0
    assert f"Serial Number: {serial_of(pki.root / 'device.pem')}" in crl_text(again)


# ---------------------------------------------------------------------------------------------
# The certificate passed upstream
# ---------------------------------------------------------------------------------------------


@dataclass
class Echo:
    """An upstream that remembers every request's headers, duplicates included."""

    seen: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append((request.path, list(request.headers.items())))
        return web.json_response({"success": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


@dataclass
class EchoFront:
    nginx: NginxServer
    pki: Pki
    upstreams: dict[str, Echo]


@pytest.fixture
async def echo_front(pki: Pki, tmp_path: Path) -> AsyncIterator[EchoFront]:
    """NGINX with every upstream (ingest, download, Fleet, Vault) an Echo of its own."""
    async with contextlib.AsyncExitStack() as exits:
        upstreams = {name: Echo() for name in ("ingest", "download", "fleet", "vault")}
        addresses = {name: await serve_app(exits, e.app()) for name, e in upstreams.items()}
        env = nginx_env(
            pki, addresses["ingest"], addresses["download"], addresses["fleet"], addresses["vault"]
        )
        nginx = NginxServer(tmp_path / "nginx", env)
        exits.callback(nginx.stop)
        nginx.start()
        yield EchoFront(nginx, pki, upstreams)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "org")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "stranger")


def forged(stranger: Pki) -> CIMultiDict[str]:
    """What a hostile client sends to pass for another device: another CA's certificate,
    "SUCCESS", an administrator's DN, each name twice in two spellings, and once more with
    underscores."""
    pem = (stranger.root / "device.pem").read_text()
    headers: CIMultiDict[str] = CIMultiDict()
    for name in ("ssl-client-cert", "SSL-Client-Cert"):
        headers.add(name, urllib.parse.quote(pem))
    for name in ("ssl-client-verify", "SSL-CLIENT-VERIFY"):
        headers.add(name, "SUCCESS")
    for name in ("ssl-client-subject-dn", "Ssl-Client-Subject-Dn"):
        headers.add(name, "CN=admin,O=osquery carve server (development)")
    headers.add("ssl-client-issuer-dn", "CN=Development device CA 00000000")
    # The underscore spelling some frameworks fold into the same name (aiohttp does not):
    # NGINX drops header names with underscores (underscores_in_headers off).
    headers.add("ssl_client_verify", "SUCCESS")
    headers.add("ssl_client_subject_dn", "CN=admin")
    return headers


async def test_the_osquery_listener_passes_the_verified_certificate_and_never_a_forged_one(
    echo_front: EchoFront, stranger: Pki
) -> None:
    pki = echo_front.pki
    device_pem = (pki.root / "device.pem").read_text()
    url = f"https://{HOST}:{echo_front.nginx.port}"
    requests = [(path, "ingest") for path in [*START_PATHS.values(), *BLOCK_PATHS.values()]]
    requests += [("/api/v1/carves", "download"), ("/file_request", "download")]
    requests += [("/api/osquery/enroll", "fleet"), ("/api/v1/osquery/config", "fleet")]
    async with aiohttp.ClientSession() as http:
        for path, _ in requests:
            async with http.post(
                url + path, data=b"{}", headers=forged(stranger), ssl=pki.device_ssl()
            ) as resp:
                assert resp.status == 200, path
    seen = {name: [p for p, _ in echo.seen] for name, echo in echo_front.upstreams.items()}
    assert seen == {
        "ingest": [p for p, u in requests if u == "ingest"],
        "download": [p for p, u in requests if u == "download"],
        "fleet": [p for p, u in requests if u == "fleet"],
        "vault": [],
    }
    expected = {
        "ssl-client-verify": "SUCCESS",
        "ssl-client-subject-dn": rfc2253(pki.root / "device.pem", "subject"),
        ISSUER_HEADER: rfc2253(pki.root / "device.pem", "issuer"),
    }
    assert expected["ssl-client-subject-dn"] == (
        "CN=osquery-device,O=osquery carve server (development)"
    )
    for name in ("ingest", "download", "fleet"):
        for path, headers in echo_front.upstreams[name].seen:
            for header, value in expected.items():
                assert values(headers, header) == [value], (path, header)
            assert not [k for k, _ in headers if "_" in k], "underscored names never pass"
            (cert,) = values(headers, "ssl-client-cert")
            # $ssl_client_escaped_cert: the PEM, percent-encoded (newline %0A, space %20, and
            # the base64's + / = as %2B %2F %3D): urllib.parse.unquote gives the PEM back.
            assert cert.startswith("-----BEGIN%20CERTIFICATE-----%0A"), cert[:40]
            assert not set(cert) & set("\n +/="), "percent-encoded"
            pem = urllib.parse.unquote(cert)
            assert ssl.PEM_cert_to_DER_cert(pem) == ssl.PEM_cert_to_DER_cert(device_pem)
            assert pem.strip() == device_pem.strip()


async def test_the_responder_listener_passes_no_device_identity_at_all(
    echo_front: EchoFront, stranger: Pki
) -> None:
    url = f"https://{HOST}:{echo_front.nginx.responder_port}"
    tls = client_ssl_context(echo_front.pki.ca, None, None)
    requests = [
        ("GET", "/api/v1/carves", "download"),
        ("POST", "/file_request", "download"),
        ("POST", "/v1/auth/userpass/login/ann", "vault"),
        ("GET", "/v1/auth/token/lookup-self", "vault"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, _ in requests:
            async with http.request(
                method, url + path, data=b"{}", headers=forged(stranger), ssl=tls
            ) as resp:
                assert resp.status == 200, path
    for name in ("download", "vault"):
        echo = echo_front.upstreams[name]
        assert [p for p, _ in echo.seen] == [p for _, p, u in requests if u == name]
        for path, headers in echo.seen:
            names = {k.lower().replace("_", "-") for k, _ in headers}
            assert not names & {*IDENTITY_HEADERS, ISSUER_HEADER}, (path, names)
    assert echo_front.upstreams["ingest"].seen == echo_front.upstreams["fleet"].seen == []


# ---------------------------------------------------------------------------------------------
# TLS 1.2 ciphers
# ---------------------------------------------------------------------------------------------


def rsa_server_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA server certificate for 127.0.0.1, for the RSA suites."""
    cert, key = directory / "rsa.pem", directory / "rsa.key"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    request += ["-subj", "/CN=carves.test", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def cipher_fronts(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[NginxServer, str]]]:
    """Two NGINX: the dev PKI's ECDSA certificate, and an RSA one (upstreams are never
    reached: only handshakes here). Name -> (server, CA file the client trusts)."""
    workdir = tmp_path_factory.mktemp("ciphers")
    rsa_cert, rsa_key = rsa_server_certificate(workdir)
    servers: dict[str, tuple[NginxServer, str]] = {}
    with contextlib.ExitStack() as exits:
        for kind in ("ecdsa", "rsa"):
            env = nginx_env(pki, "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4")
            trust = pki.ca
            if kind == "rsa":
                env |= {"NGINX_TLS_CERT": str(rsa_cert), "NGINX_TLS_KEY": str(rsa_key)}
                trust = str(rsa_cert)
            nginx = NginxServer(workdir / kind, env)
            exits.callback(nginx.stop)
            nginx.start()
            servers[kind] = (nginx, trust)
        yield servers


def handshake(port: int, trust: str, pki: Pki, cipher: str | None) -> tuple[str, str]:
    """A TLS handshake (the device's certificate offered); (version, cipher) it agreed on."""
    context = ssl.create_default_context(cafile=trust)
    context.load_cert_chain(str(pki.root / "device.pem"), str(pki.root / "device.key"))
    if cipher is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(cipher)
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        agreed = tls.cipher()
        assert agreed is not None
        return str(tls.version()), agreed[0]


# Each of these the client is able to offer (Python's OpenSSL): only the first group is one
# NGINX may accept.
ACCEPTED = [
    ("ecdsa", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("ecdsa", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("ecdsa", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("rsa", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("rsa", "ECDHE-RSA-CHACHA20-POLY1305"),
]
REFUSED = [
    ("ecdsa", "ECDHE-ECDSA-AES128-SHA"),  # ECDHE, but CBC
    ("ecdsa", "ECDHE-ECDSA-AES256-SHA384"),  # ECDHE, but CBC
    ("rsa", "ECDHE-RSA-AES128-SHA256"),  # ECDHE, but CBC
    ("rsa", "AES128-GCM-SHA256"),  # AEAD, but RSA key exchange: no forward secrecy
    ("rsa", "AES256-SHA256"),  # neither
]


@pytest.mark.parametrize("listener", ["osquery", "responder"])
@pytest.mark.parametrize(("kind", "cipher"), ACCEPTED)
def test_tls12_with_ecdhe_and_aead_is_accepted(
    cipher_fronts: dict[str, tuple[NginxServer, str]],
    pki: Pki,
    listener: str,
    kind: str,
    cipher: str,
) -> None:
    nginx, trust = cipher_fronts[kind]
    port = nginx.port if listener == "osquery" else nginx.responder_port
    assert handshake(port, trust, pki, cipher) == ("TLSv1.2", cipher)


@pytest.mark.parametrize("listener", ["osquery", "responder"])
@pytest.mark.parametrize(("kind", "cipher"), REFUSED)
def test_tls12_without_ecdhe_or_with_cbc_is_refused(
    cipher_fronts: dict[str, tuple[NginxServer, str]],
    pki: Pki,
    listener: str,
    kind: str,
    cipher: str,
) -> None:
    nginx, trust = cipher_fronts[kind]
    port = nginx.port if listener == "osquery" else nginx.responder_port
    with pytest.raises(ssl.SSLError, match=r"HANDSHAKE_FAILURE|handshake failure"):
        handshake(port, trust, pki, cipher)


def test_tls13_keeps_its_default_suites(
    cipher_fronts: dict[str, tuple[NginxServer, str]], pki: Pki
) -> None:
    for nginx, trust in cipher_fronts.values():
        version, cipher = handshake(nginx.port, trust, pki, None)
        assert version == "TLSv1.3"
        assert cipher in {
            "TLS_AES_256_GCM_SHA384",
            "TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
        }


# ---------------------------------------------------------------------------------------------
# The ingest behind NGINX: each carve records its device, and only that device sends its blocks
# ---------------------------------------------------------------------------------------------


def device_fields(cert: Path) -> tuple[str, str]:
    """(common name, SHA-256 fingerprint of the DER) of a PEM certificate."""
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    name = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(name), parsed.fingerprint(hashes.SHA256()).hex()


async def test_behind_nginx_each_carve_records_its_device_and_no_other_device_sends_its_blocks(
    stack: Stack, vault: VaultAdmin, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "org")
    assert pki_command(pki, "device", "second").returncode == 0
    first, second = pki.device_ssl(), pki.other_device_ssl("second")
    ingest = await stack.start_ingest(max_block_size=64 * 1024, trusted_proxies=f"{HOST}/32")
    async with contextlib.AsyncExitStack() as exits:
        front = await open_front(exits, stack, vault, pki, tmp_path, ingest.url)
        async with aiohttp.ClientSession() as http:
            for tls, cert in ((first, pki.root / "device.pem"),
                              (second, pki.root / "devices" / "second.pem")):  # fmt: skip
                guid, archive = archive_for(tmp_path)
                result = await device_carve(front, http, archive, guid, ssl=tls)
                assert result.ok, result
                doc = await stack.wait_complete(guid)
                common_name, fingerprint = device_fields(cert)
                assert doc["device"]["common_name"] == common_name
                assert doc["device"]["fingerprint_sha256"] == fingerprint
                assert doc["host"] == f"cert:{fingerprint}"

            # A carve started by the first device: the second one's block is refused.
            data = os.urandom(3000)
            guid = f"bound-{os.getpid()}"
            start = start_body(block_count=3, block_size=1024, carve_size=3000, carve_id=guid,
                               request_id=guid, node_key="nk")  # fmt: skip
            status, _, raw = await post(http, front.osquery_url + "/start_uploads", start, first)
            session_id = json.loads(raw)["session_id"]
            block = block_body(0, session_id, guid, data[:1024])
            status, _, raw = await post(http, front.osquery_url + "/upload_blocks", block, second)
            assert status == 403 and b"device certificate" in raw, raw
            assert await stack.chunk_count(guid) == 0
            for i in range(3):
                block = block_body(i, session_id, guid, data[i * 1024 : (i + 1) * 1024])
                status, _, raw = await post(
                    http, front.osquery_url + "/upload_blocks", block, first
                )
                assert status == 200, raw
        doc = await stack.wait_complete(guid)
        assert doc["sha256"] == hashlib.sha256(data).hexdigest()
