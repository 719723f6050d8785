"""The container image, checked without a Docker engine: hadolint, and what the Dockerfile says.

(scripts/test-containers.sh builds and runs it for real: tests/containers/test_stack.py.)

One image serves all four services (the command picks one). The checks: hadolint finds
nothing; the final stage runs as a numeric non-root user, holds only the builder's venv
(no compilers, no pip run), sets what containers need (CARVE_HTTP_HOST=0.0.0.0, JSON logs);
its CMD is a console script of pyproject.toml; EXPOSE lists the services' default ports; the
HEALTHCHECK one-liner works against a real HTTP server; .dockerignore keeps the build
context to what ``pip install .`` needs.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.assembler.settings import AssemblerSettings
from services.download.settings import DownloadSettings
from services.events.settings import EventsServiceSettings
from services.ingest.settings import IngestSettings
from services.janitor.settings import JanitorSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SERVICES: dict[str, type[BaseSettings]] = {
    "carve-ingest": IngestSettings,
    "carve-assembler": AssemblerSettings,
    "carve-download": DownloadSettings,
    "carve-janitor": JanitorSettings,
    "carve-events": EventsServiceSettings,
}
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|cmake|\w+-dev)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with their line continuations joined; comments and blank lines dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"


def global_args(text: str) -> dict[str, str]:
    """The ARGs before the first FROM (the ones a FROM line may use), with their defaults."""
    args: dict[str, str] = {}
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
    return args


def parse_stages(text: str) -> list[Stage]:
    """The stages, each FROM with the global ARGs' defaults substituted."""
    args = global_args(text)
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], rest)
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def parse_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.args("ENV"):
        for item in shlex.split(rest):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {rest!r}: use the KEY=VALUE form"
            env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def _scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts: dict[str, str] = project["scripts"]
    return scripts


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else "hadolint"


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    # The repository's .hadolint.yaml if there is one (each ignore with its reason), else an
    # empty one, so a personal ~/.config/hadolint.yaml cannot hide a finding.
    config = ROOT / ".hadolint.yaml"
    if not config.exists():
        config = tmp_path / "hadolint.yaml"
        config.write_text("ignored: []\n")
    options = ["--failure-threshold", "style", "--format", "json", "--disable-ignore-pragma"]
    result = subprocess.run(
        [_hadolint(), "--config", str(config), *options, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == ""
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0


def test_stages_share_a_pinned_python_311_slim_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "a builder stage and a final stage"
    assert all(BASE_IMAGE.match(stage.base) for stage in stages), [s.base for s in stages]
    # The venv's interpreter path must exist, identical, in the final stage.
    assert len({stage.base for stage in stages}) == 1


def test_the_base_is_a_build_argument_defaulting_to_the_pinned_image() -> None:
    text = DOCKERFILE.read_text()
    froms = [line.split()[1] for line in _logical_lines(text) if line.upper().startswith("FROM ")]
    assert froms and all(base == "${PYTHON_BASE}" for base in froms), froms
    assert BASE_IMAGE.match(global_args(text)["PYTHON_BASE"])


def _installs(builder: Stage) -> list[str]:
    return [run for run in builder.args("RUN") if "pip install" in run]


def test_builder_installs_the_project_without_dev_extras(stages: list[Stage]) -> None:
    builder = stages[0]
    installs = _installs(builder)
    assert len(installs) == 2, "the locked dependencies, then the project"
    for run in installs:
        assert "[" not in run, f"no extras (dev tools stay out of the image): {run}"
        assert "-e " not in run and "--editable" not in run
    dependencies, project = installs
    # Exactly the lock file's versions and hashes, nothing resolved at build time.
    assert re.search(r"pip install (--?[\w-]+ )*-r requirements\.lock(\s|$)", dependencies)
    assert "--require-hashes" in dependencies and "--no-deps" in dependencies
    assert re.search(r"pip install (--?[\w-]+ )*\.(\s|$)", project), project
    assert "--no-deps" in project, "every dependency comes from the lock"


def test_dependencies_get_their_own_layer_before_the_source(stages: list[Stage]) -> None:
    """A source change must not reinstall the dependencies: the layer that installs them
    comes after COPY of the lock file alone and before any COPY of the project."""
    builder = stages[0]
    keys = [(key, rest) for key, rest in builder.instructions if key in ("COPY", "RUN")]
    install = next(
        i for i, (k, rest) in enumerate(keys) if k == "RUN" and "-r requirements" in rest
    )
    copied_before = [rest.split()[:-1] for key, rest in keys[:install] if key == "COPY"]
    assert copied_before == [["requirements.lock"]], copied_before


def test_final_stage_copies_only_the_runtime_venv(stages: list[Stage], final: Stage) -> None:
    copies = final.args("COPY")
    builder = stages[0].name
    assert copies == [f"--from={builder} /opt/venv /opt/venv"], copies
    assert not final.args("ADD")
    for run in final.args("RUN"):
        assert "pip" not in run and "apt-get" not in run, run
        assert not BUILD_TOOLS.search(run), run


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.args("USER")
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"numeric, non-system UID: {users[-1]}"
    assert gid.isdigit() and int(gid) != 0, f"numeric, non-root GID: {users[-1]}"
    keywords = [key for key, _ in final.instructions]
    last_user = max(i for i, key in enumerate(keywords) if key == "USER")
    assert keywords.index("CMD") > last_user, "the service runs as that user"


def test_cmd_is_a_console_script_and_there_is_no_entrypoint(final: Stage) -> None:
    assert not final.args("ENTRYPOINT"), "the command alone picks the service"
    (cmd,) = final.args("CMD")
    argv = exec_form(cmd)
    assert argv[0] in _scripts(), f"{argv[0]} is not in [project.scripts]"
    assert argv[0] in SERVICES


def test_every_service_is_a_console_script() -> None:
    scripts = _scripts()
    for name in SERVICES:
        module = scripts[name].split(":")[0]
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists(), scripts[name]


def test_expose_lists_the_services_default_ports(final: Stage) -> None:
    exposed = {int(port.split("/")[0]) for rest in final.args("EXPOSE") for port in rest.split()}
    defaults = {cls.model_fields["http_port"].default for cls in SERVICES.values()}
    assert exposed == defaults


def test_environment_fits_containers(final: Stage) -> None:
    env = parse_env(final)
    assert env["CARVE_HTTP_HOST"] == "0.0.0.0"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    carve = {key: value for key, value in env.items() if key.startswith("CARVE_")}
    # One image for all services: every CARVE_ variable it sets must mean something to each.
    for cls in SERVICES.values():
        known = {f"CARVE_{name.upper()}" for name in cls.model_fields}
        assert set(carve) <= known, set(carve) - known
    settings = IngestSettings.model_validate({k[6:].lower(): v for k, v in carve.items()})
    assert settings.log_json is True
    assert "CARVE_HTTP_PORT" not in env, "each service keeps its own default port"


def _healthcheck(final: Stage) -> tuple[str, list[str]]:
    (healthcheck,) = final.args("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3, argv
    return options, argv


def test_healthcheck_maps_each_service_to_its_default_port(final: Stage) -> None:
    options, argv = _healthcheck(final)
    assert "--timeout=" in options and "--interval=" in options
    tree = ast.parse(argv[2])
    (table,) = [node for node in ast.walk(tree) if isinstance(node, ast.Dict)]
    ports = ast.literal_eval(table)
    expected = {
        name.removeprefix("carve-").encode(): cls.model_fields["http_port"].default
        for name, cls in SERVICES.items()
    }
    assert ports == expected
    assert "/healthz" in argv[2] and "127.0.0.1" in argv[2]


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def _serve(status: int) -> HTTPServer:
    handler = type("Handler", (_Health,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_runs(final: Stage, status: int, healthy: bool) -> None:
    """The image's python (same major.minor as this one) runs the one-liner as written."""
    _, argv = _healthcheck(final)
    server = _serve(status)
    try:
        env = {"PATH": os.environ["PATH"], "CARVE_HTTP_PORT": str(server.server_address[1])}
        result = subprocess.run(
            [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


# --- .dockerignore ---------------------------------------------------------------------


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.lstrip("!").rstrip("/")))
    return rules


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule, for the patterns used here: a pattern matching a directory covers
    everything under it; a leading ``**/`` matches at any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(part, tail) for part in parts)
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def in_context(path: str) -> bool:
    included = True
    for negated, pattern in _dockerignore():
        if _matches(pattern, path):
            included = negated
    return included


def _copy_sources(stages: list[Stage]) -> set[str]:
    """What the stages COPY from the build context (not from another stage)."""
    sources = set()
    for stage in stages:
        for rest in stage.args("COPY"):
            words = rest.split()
            if not any(w.startswith("--from=") for w in words):
                sources |= {w.rstrip("/") for w in words[:-1] if not w.startswith("--")}
    return sources


def test_build_context_has_what_the_build_copies(stages: list[Stage]) -> None:
    sources = _copy_sources(stages)
    assert {"pyproject.toml", "README.md"} <= sources  # README.md: pyproject's readme
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        assert files, f"{source} is missing or holds no Python"
        for file in files:
            assert in_context(str(file.relative_to(ROOT))), f"{file} is left out of the context"


def test_every_package_of_the_project_is_copied(stages: list[Stage]) -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]}
    assert packages <= _copy_sources(stages)


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        ".run/logs/x.log",
        "tests/conftest.py",
        "deploy/k8s",
        "bench/upload.py",
        "services/__pycache__/x.cpython-311.pyc",
        ".hypothesis/x",
        "docs/api.md",
    ],
)
def test_build_context_leaves_out(path: str) -> None:
    assert not in_context(path)


def test_hadolint_finds_nothing_in_the_stand_in_images() -> None:
    """deploy/compose/dev-images (local tests only) is linted too, with the same threshold."""
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", "--format", "json",
         str(ROOT / "deploy" / "compose" / "dev-images" / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0
