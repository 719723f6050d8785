"""``carve-triage``: scans every complete carve with YARA-X rules and hash sets."""

from __future__ import annotations

from services.triage.main import create_app, reload_on_sighup
from services.triage.settings import TriageSettings
from shared.runner import configure_logging, serve


def main() -> None:
    settings = TriageSettings()
    configure_logging(settings)
    app = create_app(settings)
    app.on_startup.append(reload_on_sighup)
    serve(app, settings, shutdown_timeout=10)


if __name__ == "__main__":
    main()
