"""The README's settings table matches what the code reads, default for default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from services.assembler.settings import AssemblerSettings
from services.download.settings import DownloadSettings
from services.ingest.settings import IngestSettings
from services.janitor.settings import JanitorSettings

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(CARVE_[A-Z_]+)` \| (.+?) \|", re.MULTILINE)


def _rows() -> dict[str, str]:
    return dict(ROW.findall(README.read_text()))


SERVICES = (IngestSettings, AssemblerSettings, DownloadSettings, JanitorSettings)


@pytest.mark.parametrize("settings_class", SERVICES)
def test_every_setting_is_documented_with_its_default(settings_class: type[BaseSettings]) -> None:
    rows = _rows()
    for name, field in settings_class.model_fields.items():
        env = f"CARVE_{name.upper()}"
        assert env in rows, f"{env} missing from the README settings table"
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        assert f"`{default}`" in rows[env], f"{env}: README says {rows[env]}, code {default}"


def test_readme_documents_nothing_the_code_does_not_read() -> None:
    known = {f"CARVE_{n.upper()}" for cls in SERVICES for n in cls.model_fields}
    assert set(_rows()) <= known


def test_ci_runs_the_readme_test_command() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "scripts/test.sh" in README.read_text()
