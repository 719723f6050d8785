"""``manifest.json`` and ``manifest.csv`` of a campaign export, written as they are read.

Each comes from one pass over the export's carves (``export.Export.carves``) and their
stored manifests (``shared.manifest``), fetched ``BATCH`` at a time: a carve's row, and its
members' paths, sizes and SHA-256s. Nothing is held but one batch.

The CSV is for spreadsheets, and member paths come from hosts: a cell starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return would be read as a formula, so it gets a
leading ``'`` (the JSON keeps every value exactly as stored).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import orjson

from services.download.export import Carve, Export, carve_row
from shared.manifest import COLLECTION
from shared.mongo import transient_on_outage
from shared.timefmt import rfc3339

BATCH = 50
CSV_COLUMNS = (
    "host",
    "device",
    "carve_id",
    "file",
    "archive_sha256",
    "member_path",
    "member_size",
    "member_sha256",
)
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


async def _with_members(export: Export) -> AsyncIterator[tuple[Carve, dict[str, Any] | None]]:
    """Each carve with its stored manifest (None: finalized before manifests existed)."""
    manifests = export.db[COLLECTION]
    batch: list[Carve] = []

    async def flush() -> list[tuple[Carve, dict[str, Any] | None]]:
        ids = [c.carve_id for c in batch]
        with transient_on_outage("export manifests"):
            found = await manifests.find({"_id": {"$in": ids}}).to_list()
        by_id = {m["_id"]: m for m in found}
        return [(c, by_id.get(c.carve_id)) for c in batch]

    async for carve in export.carves():
        batch.append(carve)
        if len(batch) >= BATCH:
            for pair in await flush():
                yield pair
            batch = []
    if batch:
        for pair in await flush():
            yield pair


def _members(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    if manifest is None:
        return []
    return [
        {"path": m["path"], "size": m["size"], "sha256": m.get("sha256"), "type": m["type"]}
        for m in manifest.get("members", [])
        if not m.get("superseded")
    ]


async def manifest_json(export: Export) -> AsyncIterator[bytes]:
    head = {"request_id": export.request_id, "as_of": rfc3339(export.as_of)}
    yield orjson.dumps(head)[:-1] + b',"carves":['
    first = True
    async for carve, manifest in _with_members(export):
        row = carve_row(carve)
        row["members"] = _members(manifest)
        row["members_complete"] = bool(
            manifest and not manifest.get("truncated") and not manifest.get("error")
        )
        yield (b"" if first else b",") + orjson.dumps(row)
        first = False
    yield b"]}\n"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _csv_lines(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([[_cell(v) for v in row] for row in rows])
    return out.getvalue().encode()


async def manifest_csv(export: Export) -> AsyncIterator[bytes]:
    yield _csv_lines([list(CSV_COLUMNS)])
    async for carve, manifest in _with_members(export):
        row = carve_row(carve)
        base = [row["host"], row["device"], row["carve_id"], row["file"], row["sha256"]]
        members = [m for m in _members(manifest) if m["type"] == "file"]
        lines = [[*base, m["path"], m["size"], m["sha256"]] for m in members]
        yield _csv_lines(lines or [[*base, "", "", ""]])
