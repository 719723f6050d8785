"""The compose stack for real: images built, ``docker compose up``, osquery carving through NGINX.

Run by ``scripts/test-containers.sh`` (not by a bare ``pytest``: it needs the stack that script
brings up, described by the JSON file ``$CARVE_STACK`` points at). Each test drives the stack
from the host the way its users do: ``carve-osquery-sim`` as the osquery host (with the
device certificate, or without, or another CA's), ``carvectl`` as the responder (through the
responder listener), ``docker compose run`` for the janitor's one-shot, ``docker stop`` for
the assembler. Every carve is checked by SHA-256, end to end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

BIN = Path(sys.executable).parent
# (start, block) paths: the original server's, Fleet's v1 and Fleet's current ones.
CARVE_ENDPOINTS = {
    "original": ("/start_uploads", "/upload_blocks"),
    "fleet-v1": ("/api/v1/osquery/carve/begin", "/api/v1/osquery/carve/block"),
    "fleet": ("/api/osquery/carve/begin", "/api/osquery/carve/block"),
}
MiB = 1024 * 1024


@dataclass(frozen=True)
class Stack:
    project: str
    compose: list[str]  # the docker compose command line up to the subcommand
    osquery_url: str  # NGINX's mutual-TLS listener (device certificates)
    responder_url: str  # NGINX's responder listener (server TLS, Vault token)
    pki: Path  # make-dev-pki.sh: ca.pem, device.pem/.key
    other_pki: Path  # another CA and its device
    responder_username: str
    responder_password: str
    workdir: Path
    webhook_secret: str  # of the webhook endpoint (tests/containers/webhook-sink.yaml)

    @property
    def ca(self) -> str:
        return str(self.pki / "ca.pem")

    def device(self) -> tuple[str, str]:
        return str(self.pki / "device.pem"), str(self.pki / "device.key")

    def run_compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture(scope="session")
def stack() -> Stack:
    path = os.environ.get("CARVE_STACK")
    if not path:
        pytest.fail(
            "CARVE_STACK is not set: run scripts/test-containers.sh, which brings the stack up"
        )
    data = json.loads(Path(path).read_text())
    for key in ("pki", "other_pki", "workdir"):
        data[key] = Path(data[key])
    return Stack(**data)


# ---------------------------------------------------------------------------------------------
# The host side: the simulator as osquery, carvectl as the responder
# ---------------------------------------------------------------------------------------------


def sim_argv(
    stack: Stack,
    *,
    client: tuple[str, str] | None,
    endpoints: tuple[str, str] = CARVE_ENDPOINTS["original"],
    size: int = 3 * MiB + 12345,
    block_size: int = MiB,
    hosts: int = 1,
) -> list[str]:
    """``carve-osquery-sim`` as an osquery 5.22 host that trusts the stack's CA."""
    argv = [
        str(BIN / "carve-osquery-sim"), "--url", stack.osquery_url, "--cacert", stack.ca,
        "--hosts", str(hosts), "--size", str(size), "--block-size", str(block_size),
        "--start-endpoint", endpoints[0], "--continue-endpoint", endpoints[1],
        "--version", "5.22", "--timeout", "30", "--json",
    ]  # fmt: skip
    if client is not None:
        argv += ["--cert", client[0], "--key", client[1]]
    return argv


def sim_results(
    done: subprocess.CompletedProcess[str] | tuple[int, str, str],
) -> list[dict[str, Any]]:
    stdout = done.stdout if isinstance(done, subprocess.CompletedProcess) else done[1]
    results: list[dict[str, Any]] = json.loads(stdout)["results"]
    return results


def simulate(stack: Stack, **options: Any) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        sim_argv(stack, **options), capture_output=True, text=True, timeout=300, check=False
    )
    return done.returncode, sim_results(done), done.stderr


@pytest.fixture(scope="session")
def responder(stack: Stack) -> Callable[..., subprocess.CompletedProcess[str]]:
    """carvectl as a responder: logged in through the responder listener (no certificate)."""
    home = stack.workdir / "responder"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "XDG_CONFIG_HOME": str(home),
        "CARVECTL_SERVER": stack.responder_url,
        "CARVECTL_CACERT": stack.ca,
        "VAULT_ADDR": stack.responder_url,
        "VAULT_CACERT": stack.ca,
    }

    def carvectl(*argv: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"CARVECTL_PASSWORD": password} if password is not None else {}
        return subprocess.run(
            [str(BIN / "carvectl"), "--quiet", *argv],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    done = carvectl(
        "login", "--username", stack.responder_username, password=stack.responder_password
    )
    assert done.returncode == 0, done.stderr
    return carvectl


def wait_for_status(
    carvectl: Callable[..., Any], carve_id: str, want: str, timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        done = carvectl("--json", "show", carve_id)
        if done.returncode == 0:
            last = json.loads(done.stdout)
            if last.get("status") == want:
                return dict(last)
        time.sleep(0.5)
    raise AssertionError(f"carve {carve_id} not {want} after {timeout} s: {last}")


def download_verified(carvectl: Callable[..., Any], workdir: Path, carve: dict[str, Any]) -> None:
    """The responder's end-to-end check: carvectl get --expect-sha256 the host's SHA-256;
    the carve is stored sealed (the compose example turns encryption at rest on)."""
    shown = wait_for_status(carvectl, carve["carve_id"], "complete")
    assert shown["encryption"] == {"scheme": "aes-256-gcm/1", "sealed": "all", "shredded": False}
    target = workdir / f"{carve['carve_id']}.tar"
    done = carvectl("get", carve["carve_id"], "-o", str(target), "--expect-sha256", carve["sha256"])
    assert done.returncode == 0, done.stderr
    data = target.read_bytes()
    assert len(data) == carve["size"]
    assert hashlib.sha256(data).hexdigest() == carve["sha256"]


# ---------------------------------------------------------------------------------------------
# Carving with the device certificate, and refusals
# ---------------------------------------------------------------------------------------------


def test_responder_logs_in_through_the_responder_listener(
    stack: Stack, responder: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    token = stack.workdir / "responder" / "carvectl" / "token"
    assert token.exists() and token.stat().st_mode & 0o077 == 0
    done = responder("--json", "list")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)
    # A wrong password: Vault's refusal, through the same listener (exit 3: HTTP 401/400).
    other = stack.workdir / "intruder"
    done = subprocess.run(
        [str(BIN / "carvectl"), "--quiet", "login", "--username", stack.responder_username],
        env={
            "PATH": os.environ["PATH"], "XDG_CONFIG_HOME": str(other),
            "CARVECTL_SERVER": stack.responder_url, "CARVECTL_CACERT": stack.ca,
            "VAULT_ADDR": stack.responder_url, "VAULT_CACERT": stack.ca,
            "CARVECTL_PASSWORD": "not-" + stack.responder_password,
        },
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode != 0 and not (other / "carvectl" / "token").exists()


@pytest.mark.parametrize("paths", CARVE_ENDPOINTS)
def test_a_device_carves_through_nginx_and_the_responder_downloads_it(
    stack: Stack, responder: Callable[..., subprocess.CompletedProcess[str]], paths: str
) -> None:
    code, results, stderr = simulate(stack, client=stack.device(), endpoints=CARVE_ENDPOINTS[paths])
    (carve,) = results
    assert code == 0 and carve["status"] == "SUCCESS", (carve, stderr[-2000:])
    assert carve["block_count"] == 4 and not carve["failed_blocks"]
    download_verified(responder, stack.workdir, carve)


def webhooks_received(stack: Stack) -> list[dict[str, Any]]:
    """What the webhook sink was sent, from its log: headers and body of each request."""
    logs = stack.run_compose("logs", "--no-color", "--no-log-prefix", "webhook-sink").stdout
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


def test_a_completed_carve_is_announced_to_the_webhook_signed(stack: Stack) -> None:
    from standardwebhooks import Webhook

    code, results, stderr = simulate(stack, client=stack.device())
    (carve,) = results
    assert code == 0 and carve["status"] == "SUCCESS", (carve, stderr[-2000:])
    deadline, events = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        events = [e for e in webhooks_received(stack) if carve["carve_id"] in e["body"]]
        if any('"carve.completed"' in e["body"] for e in events):
            break
        time.sleep(0.5)
    verified = [Webhook(stack.webhook_secret).verify(e["body"], e["headers"]) for e in events]
    by_type = {v["type"]: v for v in verified}
    # carve.triaged (carve-triage's verdict) may come before the loop above saw completed.
    assert {"carve.completed", "carve.started"} <= set(by_type), verified
    assert set(by_type) <= {"carve.completed", "carve.started", "carve.triaged"}, verified
    completed = by_type["carve.completed"]
    assert completed["subject"] == carve["carve_id"] and completed["specversion"] == "1.0"
    assert completed["data"]["sha256"] == carve["sha256"]
    assert completed["data"]["device"]["common_name"] == completed["data"]["host"]


def test_a_carve_holding_the_example_rule_s_string_is_flagged(
    stack: Stack, responder: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """The compose example rule (deploy/compose/triage/rules) fires on a carved file; the
    responder sees the verdict and the hit, the webhook gets carve.triaged."""
    evidence = stack.workdir / "dropper.txt"
    evidence.write_bytes(b"harmless test marker: EICAR-STANDARD-ANTIVIRUS-TEST-FILE\n")
    argv = [a for a in sim_argv(stack, client=stack.device(), block_size=MiB)]
    size_at = argv.index("--size")
    argv[size_at : size_at + 2] = ["--file", str(evidence)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    (carve,) = sim_results(done)
    assert done.returncode == 0 and carve["status"] == "SUCCESS", (carve, done.stderr[-2000:])
    deadline, shown = time.monotonic() + 90, dict[str, Any]()
    while time.monotonic() < deadline:
        answer = responder("--json", "show", carve["carve_id"])
        shown = json.loads(answer.stdout) if answer.returncode == 0 else {}
        if (shown.get("triage") or {}).get("status") == "done":
            break
        time.sleep(0.5)
    triage = shown["triage"]
    assert triage["verdict"] == "flagged", triage
    (hit,) = triage["hits"]
    assert (hit["rule"], hit["namespace"], hit["kind"]) == ("eicar_test_file", "example", "yara")
    assert hit["member"].endswith("/dropper.txt")
    listed = json.loads(responder("--json", "list", "--verdict", "flagged").stdout)
    assert carve["carve_id"] in [c["carve_id"] for c in listed]
    printed = responder("show", carve["carve_id"]).stdout
    assert "triage: flagged (done)" in printed and "rule example:eicar_test_file" in printed
    deadline, triaged = time.monotonic() + 60, list[dict[str, Any]]()
    while time.monotonic() < deadline and not triaged:
        triaged = [
            e for e in webhooks_received(stack)
            if carve["carve_id"] in e["body"] and '"carve.triaged"' in e["body"]
        ]  # fmt: skip
        time.sleep(0.5)
    (event,) = triaged
    assert json.loads(event["body"])["data"]["triage"]["verdict"] == "flagged"


# Clients NGINX must turn away on the device listener. One entry per kind of client; each gives
# the (certificate, key) it presents, or None. The revoked device is made and revoked by
# scripts/test-containers.sh (make-dev-pki.sh device, then revoke) before the stack starts.
REFUSED: dict[str, Callable[[Stack], tuple[str, str] | None]] = {
    "no certificate": lambda stack: None,
    "another CA's device certificate": lambda stack: (
        str(stack.other_pki / "device.pem"),
        str(stack.other_pki / "device.key"),
    ),
    "a revoked device certificate": lambda stack: (
        str(stack.pki / "devices" / "lost-laptop.pem"),
        str(stack.pki / "devices" / "lost-laptop.key"),
    ),
}


@pytest.mark.parametrize("client", REFUSED)
def test_nginx_refuses_a_client_without_a_device_certificate_of_the_ca(
    stack: Stack, responder: Callable[..., subprocess.CompletedProcess[str]], client: str
) -> None:
    cert = REFUSED[client](stack)
    # What the wire shows: NGINX's HTML 400, the request never reached the ingest.
    body = {"block_count": 1, "block_size": 10, "carve_size": 10, "carve_id": str(uuid.uuid4()),
            "request_id": "r", "node_key": "k"}  # fmt: skip
    reply = requests.post(
        stack.osquery_url + "/start_uploads", json=body, verify=stack.ca, cert=cert, timeout=30
    )
    assert reply.status_code == 400
    assert reply.headers["Content-Type"].startswith("text/html")
    assert b"SSL certificate" in reply.content
    # What the osquery host concludes: the start failed (non-JSON body), nothing was stored.
    code, results, _ = simulate(stack, client=cert)
    (carve,) = results
    assert code != 0 and carve["status"] == "DATA POST FAILED" and carve["session_id"] is None
    done = responder("--json", "show", carve["carve_id"])
    assert done.returncode == 5, done.stdout  # 404: no such carve


# ---------------------------------------------------------------------------------------------
# The janitor's one-shot
# ---------------------------------------------------------------------------------------------


def start_and_abandon(stack: Stack) -> str:
    """A host that starts a two-block carve, sends block 0 and dies."""
    carve_id = str(uuid.uuid4())
    start = {"block_count": 2, "block_size": 1024, "carve_size": 2000, "carve_id": carve_id,
             "request_id": "abandoned", "node_key": "k"}  # fmt: skip
    options: dict[str, Any] = {"verify": stack.ca, "cert": stack.device(), "timeout": 30}
    reply = requests.post(stack.osquery_url + "/start_uploads", json=start, **options)
    assert reply.status_code == 200, reply.text
    session = reply.json()["session_id"]
    block = {
        "block_id": 0,
        "session_id": session,
        "request_id": "abandoned",
        "data": base64.b64encode(b"A" * 1024).decode(),
    }
    reply = requests.post(stack.osquery_url + "/upload_blocks", json=block, **options)
    assert reply.status_code == 200 and reply.json().get("success") is True, reply.text
    return carve_id


def test_the_janitor_one_shot_fails_an_abandoned_carve(
    stack: Stack, responder: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    carve_id = start_and_abandon(stack)
    wait_for_status(responder, carve_id, "receiving", timeout=30)  # block 0 is stored
    time.sleep(2.5)
    # The CronJob's command, in a container of the janitor service (the compose network, its
    # settings), with an idle timeout of 2 s instead of an hour.
    done = stack.run_compose(
        "run", "--rm", "--no-deps", "-T", "-e", "CARVE_SESSION_IDLE_TIMEOUT=2",
        "janitor", "carve-janitor", "--once",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["skipped"] is False and report["dry_run"] is False, report
    assert report["actions"].get("failed", 0) >= 1, report
    assert wait_for_status(responder, carve_id, "failed", timeout=10)["status"] == "failed"


# ---------------------------------------------------------------------------------------------
# docker stop of an assembler in the middle of a carve
# ---------------------------------------------------------------------------------------------


def inspect(container: str) -> dict[str, Any]:
    done = subprocess.run(
        ["docker", "inspect", container], capture_output=True, text=True, timeout=30, check=True
    )
    info: dict[str, Any] = json.loads(done.stdout)[0]
    return info


def wait_for_a_stored_chunk(
    carvectl: Callable[..., Any], since: str, sim: subprocess.Popen[str], timeout: float = 60
) -> None:
    """Return once a carve started after ``since`` has a block stored and is still receiving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sim.poll() is None:
        done = carvectl("--json", "list", "--status", "receiving", "--since", since)
        if done.returncode == 0 and any(
            (carve.get("blocks_received") or 0) >= 1 for carve in json.loads(done.stdout)
        ):
            return
        time.sleep(0.1)


@pytest.mark.timeout(400)
def test_docker_stop_of_an_assembler_mid_carve_loses_nothing(
    stack: Stack, responder: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    assemblers = stack.run_compose("ps", "-q", "assembler").stdout.split()
    assert len(assemblers) == 2, assemblers
    victim = assemblers[0]
    grace = inspect(victim)["Config"].get("StopTimeout")
    assert grace == 40, grace  # compose's stop_grace_period
    # Three hosts, 48 blocks each; one of the two assemblers is stopped while they carve, as soon
    # as a chunk of theirs is stored (a fixed sleep let a fast machine finish them first).
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    sim = subprocess.Popen(
        sim_argv(stack, client=stack.device(), hosts=3, size=48 * MiB - 1000, block_size=MiB),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_a_stored_chunk(responder, since, sim)
        assert sim.poll() is None, "the carves ended before the stop: nothing was in flight"
        started = time.monotonic()
        stop = subprocess.run(
            ["docker", "stop", victim], capture_output=True, text=True, timeout=90, check=False
        )
        stopped_in = time.monotonic() - started
        stdout, stderr = sim.communicate(timeout=300)
    finally:
        if sim.poll() is None:
            sim.kill()
    assert stop.returncode == 0, stop.stderr
    state = inspect(victim)["State"]
    print(f"assembler {victim[:12]} stopped in {stopped_in:.1f} s, exit code {state['ExitCode']}")
    logs = subprocess.run(["docker", "logs", "--tail", "20", victim], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    print("its last log lines:\n" + (logs.stdout + logs.stderr)[-3000:])
    # Graceful: it exited by itself (0, not 137 for SIGKILL) within the grace period.
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert stopped_in < grace, stopped_in
    results = sim_results((0, stdout, stderr))
    assert len(results) == 3
    for carve in results:
        assert carve["status"] == "SUCCESS" and not carve["failed_blocks"], (carve, stderr[-2000:])
    for carve in results:
        download_verified(responder, stack.workdir, carve)
    # Back to two assemblers for whatever runs next.
    done = subprocess.run(["docker", "start", victim], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
