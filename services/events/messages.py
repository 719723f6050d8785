"""What a webhook request carries: the CloudEvent itself, or a chat message (``slack``).

Both are signed per the Standard Webhooks specification (the ``standardwebhooks`` reference
library): ``webhook-id`` = the event id (receivers deduplicate on it), ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

Chat text names the carve by what and where; every piece of it a host controls (paths, the
host's name, a failure reason quoting the archive) is escaped for Slack's markup (``&``,
``<``, ``>``, which also disarms ``<!channel>`` and links) and set in inline code, so that
``*bold*``, ``_italics_`` or mentions stay text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks import Webhook

from shared.events.envelope import CarveEvent
from shared.inert import inert

_VERBS = {
    "carve.started": "carve started",
    "carve.completed": "carve complete",
    "carve.failed": "carve failed",
    "carve.expired": "carve expired",
    "carve.deleted": "carve deleted",
    "carve.triaged": "carve triaged",
    "carve.hold.placed": "legal hold placed on carve",
    "carve.hold.released": "legal hold released on carve",
}


def signed_headers(secret: str, event_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` (``secret``: ``whsec_...``)."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
        "content-type": "application/json",
    }


def code(text: object, limit: int = 200) -> str:
    """Host-controlled text as inert Slack inline code."""
    value = inert(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`" + value.replace("`", "\u02cb") + "`"


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def slack_text(event: CarveEvent, console_url: str) -> str:
    """One line for a chat channel: what was carved, from where, how big, its hash, a link."""
    data: dict[str, Any] = event.data
    verb = _VERBS.get(event.type, event.type)
    paths = (data.get("manifest") or {}).get("paths") or []
    what = code(paths[0]) if paths else f"carve {code(event.subject, 64)}"
    if len(paths) > 1:
        what += f" +{len(paths) - 1} more"
    parts = [f"{verb}: {what} from {code(data.get('host') or 'unknown', 128)}"]
    if isinstance(data.get("carve_size"), int):
        parts.append(size_text(data["carve_size"]))
    if data.get("sha256"):
        parts.append(f"sha256 {code(data['sha256'], 64)}")
    if data.get("failure_reason"):
        parts.append(f"reason {code(data['failure_reason'])}")
    if (verdict := (data.get("triage") or {}).get("verdict")) is not None:
        parts.append(f"verdict {code(verdict, 32)}")
    if console_url:
        link = console_url.rstrip("/") + "/#/carves/" + event.subject
        parts.append(f"<{link}|open in the console>")
    return ", ".join(parts)


def slack_body(event: CarveEvent, console_url: str) -> bytes:
    return orjson.dumps({"text": slack_text(event, console_url)})
