"""The lock files: complete, hashed, consistent with each other and with pyproject's ranges.

requirements.lock (the image) and requirements-dev.lock (.venv, so the tests) are resolved
separately by scripts/lock.sh; the image must run the versions the tests ran.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "requirements.lock"
DEV = ROOT / "requirements-dev.lock"
STANDINS = ROOT / "deploy" / "compose" / "dev-images" / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\\n]+?))?\s*\\?$", re.M)


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, set[tuple[str, str]]]:
    """Package -> {(version, marker)}: a universal lock may pin two versions under markers."""
    found: dict[str, set[tuple[str, str]]] = {}
    for m in PIN.finditer(path.read_text()):
        found.setdefault(_name(m[1]), set()).add((m[2], (m[3] or "").strip()))
    return found


def project() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"runtime": data["dependencies"], "dev": data["optional-dependencies"]["dev"]}


@pytest.mark.parametrize("lock", [RUNTIME, DEV, STANDINS], ids=lambda p: p.name)
def test_every_pin_carries_hashes(lock: Path) -> None:
    text = lock.read_text()
    blocks = [b for b in re.split(r"\n(?=[A-Za-z0-9])", text) if PIN.match(b)]
    assert blocks and len(blocks) == sum(len(v) for v in pins(lock).values())
    for block in blocks:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), block.splitlines()[0]


@pytest.mark.parametrize(("lock", "groups"), [(RUNTIME, ["runtime"]), (DEV, ["runtime", "dev"])])
def test_the_lock_pins_every_dependency_within_pyproject_range(
    lock: Path, groups: list[str]
) -> None:
    locked = pins(lock)
    for group in groups:
        for spec in project()[group]:
            requirement = Requirement(spec)
            versions = locked.get(_name(requirement.name))
            assert versions, f"{requirement.name} is not in {lock.name}: bash scripts/lock.sh"
            for version, _marker in versions:
                assert requirement.specifier.contains(Version(version), prereleases=True), (
                    f"{lock.name} pins {requirement.name}=={version} outside {requirement}"
                )


def test_the_image_runs_the_versions_the_tests_ran() -> None:
    runtime, dev = pins(RUNTIME), pins(DEV)
    differ = {name: (v, dev.get(name)) for name, v in runtime.items() if dev.get(name) != v}
    assert not differ, f"requirements.lock and requirements-dev.lock disagree: {differ}"
    dev_only = {_name(Requirement(spec).name) for spec in project()["dev"]}
    assert not dev_only & set(runtime), "a dev tool in the image's lock"


def test_setup_and_the_dockerfile_install_from_the_locks() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "pip install -q --require-hashes -r requirements-dev.lock" in setup
    assert "pip install -q --no-deps -e ." in setup
    # setup.sh reinstalls when the lock changes, not only pyproject.toml.
    assert "cat pyproject.toml requirements-dev.lock | sha256sum" in setup
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in dockerfile
