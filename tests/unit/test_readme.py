"""The settings table (docs/operations.md) matches what the code reads, default for default;
the README stays a landing page that names the test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from services.assembler.settings import AssemblerSettings
from services.download.settings import DownloadSettings
from services.events.settings import EventsServiceSettings
from services.ingest.settings import IngestSettings
from services.janitor.settings import JanitorSettings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SETTINGS_TABLE = ROOT / "docs" / "operations.md"
ROW = re.compile(r"^\| `(CARVE_[A-Z_]+)` \| (.+?) \|", re.MULTILINE)


def _rows() -> dict[str, str]:
    return dict(ROW.findall(SETTINGS_TABLE.read_text()))


SERVICES = (
    IngestSettings,
    AssemblerSettings,
    DownloadSettings,
    JanitorSettings,
    EventsServiceSettings,
)


@pytest.mark.parametrize("settings_class", SERVICES)
def test_every_setting_is_documented_with_its_default(settings_class: type[BaseSettings]) -> None:
    rows = _rows()
    for name, field in settings_class.model_fields.items():
        env = f"CARVE_{name.upper()}"
        assert env in rows, f"{env} missing from the settings table in docs/operations.md"
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        said = rows[env]
        assert f"`{default}`" in said, f"{env}: docs/operations.md says {said}, code {default}"


def test_settings_table_documents_nothing_the_code_does_not_read() -> None:
    known = {f"CARVE_{n.upper()}" for cls in SERVICES for n in cls.model_fields}
    assert set(_rows()) <= known


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "scripts/test.sh" in README.read_text()


def test_readme_is_a_landing_page() -> None:
    """What it is, the picture, the quick start and where to read next; the rest is in docs/."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for heading in ("## Architecture", "## Quick start", "## Where to read next"):
        assert heading in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).exists(), f"README links to {page}, which does not exist"
