"""``carvectl campaign`` and ``carvectl export``: every carve of one request id.

``export`` streams the campaign's ZIP into ``FILE.part`` and keeps, beside it, what a resume
needs (``FILE.part.json``: the request id, the server's ``as_of`` and ETag). Run again, it
asks for the rest from the bytes it has (``offset``, ``If-Match``); a campaign that changed
meanwhile (412) starts over. Once whole, the ZIP is checked before it gets its name: every
entry's CRC-32 (zipfile), and every carve's archive against the SHA-256 ``manifest.json``
gives for it, every carve present.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm  # type: ignore[import-untyped]

from clients.carvectl.api import Api, error_from_response, network_reason
from clients.carvectl.errors import EXIT_INTEGRITY, EXIT_OK, CliError
from clients.carvectl.fetch import CHUNK_SIZE
from clients.carvectl.lookup import what_cell
from clients.carvectl.render import (
    format_progress,
    format_table,
    human_size,
    note,
    print_json,
    printable,
)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
CAMPAIGN_HEADERS = ("HOST", "STATUS", "PROGRESS", "SIZE", "CARVED", "ID")


def cmd_campaign(args: argparse.Namespace, api: Api) -> int:
    params: dict[str, str | int] = {"limit": 1000}
    campaign = api.campaign(args.request_id, params)
    carves: list[dict[str, Any]] = list(campaign.get("carves") or [])
    while args.all and (cursor := campaign.get("next_cursor")):
        campaign = api.campaign(args.request_id, {**params, "cursor": cursor})
        carves += campaign.get("carves") or []
    if args.json:
        print_json({**campaign, "carves": carves})
        return EXIT_OK
    counts = ", ".join(f"{n} {status}" for status, n in (campaign.get("counts") or {}).items())
    sizes = ", ".join(f"{human_size(n)} {s}" for s, n in (campaign.get("bytes") or {}).items())
    paths = "; ".join(f"{p['path']} ({p['carves']})" for p in campaign.get("paths") or [])
    lines = [
        ("request id", str(campaign.get("request_id"))),
        (
            "carves",
            f"{campaign.get('carve_count')} on {campaign.get('host_count')} hosts: {counts}",
        ),
        ("bytes", sizes or "-"),
        ("progress", f"{float(campaign.get('progress') or 0) * 100:.1f}%"),
        ("activity", f"{campaign.get('first_activity')} to {campaign.get('last_activity')}"),
        ("carved", paths or "- (known once carves complete)"),
    ]
    for label, value in lines:
        print(f"{label + ':':<11} {printable(value)}")
    print()
    rows = [
        [
            str(c.get("host") or "-"),
            str(c.get("status")),
            format_progress(c.get("blocks_received"), c.get("block_count")),
            human_size(c.get("carve_size")),
            what_cell(c),
            str(c.get("carve_id")),
        ]
        for c in carves
    ]
    print(format_table(CAMPAIGN_HEADERS, rows, right={2, 3}))
    if campaign.get("next_cursor"):
        note("more carves: add --all to list them all", args.quiet)
    return EXIT_OK


def _state(path: Path) -> dict[str, str]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _open(part: Path, offset: int) -> Any:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | (0 if offset else os.O_TRUNC)
    fh = os.fdopen(os.open(part, flags, 0o600), "r+b" if offset else "wb")
    fh.seek(offset)
    fh.truncate()
    return fh


def _download(
    api: Api, args: argparse.Namespace, part: Path, state_path: Path
) -> tuple[int, dict[str, str]]:
    """Append the rest of the ZIP to ``part``: the bytes it now has, and the export's state."""
    state = _state(state_path)
    offset = (
        part.stat().st_size if part.exists() and state.get("request_id") == args.request_id else 0
    )
    params, headers = {}, {}
    if offset:
        params = {"as_of": state["as_of"], "offset": str(offset)}
        headers = {"If-Match": state["etag"]}
        note(f"resuming {printable(part.name)} at byte {offset}", args.quiet)
    response = api.export(args.request_id, params, headers)
    with contextlib.closing(response):
        if response.status_code == 412 and offset:
            note("the campaign changed since the first try: starting over", args.quiet)
            part.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)
            return _download(api, args, part, state_path)
        if response.status_code != 200:
            raise error_from_response(response)
        if int(response.headers.get("X-Carve-Export-Offset", "0")) != offset:
            raise CliError("the server did not resume where asked: run the command again")
        state = {
            "request_id": args.request_id,
            "as_of": response.headers.get("X-Carve-Export-As-Of", ""),
            "etag": response.headers.get("ETag", ""),
            "carves": response.headers.get("X-Carve-Export-Carves", ""),
        }
        state_path.write_text(json.dumps(state))
        size = offset
        progress = not args.quiet and sys.stderr.isatty()
        label = f"campaign {printable(args.request_id[:24])}"
        with (
            _open(part, offset) as out,
            tqdm(
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
                file=sys.stderr,
                desc=label,
                leave=False,
            ) as bar,
        ):
            try:
                for piece in response.iter_content(chunk_size=CHUNK_SIZE):
                    out.write(piece)
                    size += len(piece)
                    bar.update(len(piece))
            except requests.RequestException as exc:
                raise CliError(
                    f"export interrupted at byte {size}: {network_reason(exc)}; "
                    "run the same command again to resume"
                ) from exc
            out.flush()
            os.fsync(out.fileno())
    return size, state


def verify_export(path: Path, expected_carves: int | None) -> int:
    """Check the ZIP: CRCs, every carve's archive against manifest.json; how many carves."""
    try:
        with zipfile.ZipFile(path) as zf:
            if (bad := zf.testzip()) is not None:
                raise CliError(f"{printable(bad)}: CRC-32 mismatch", EXIT_INTEGRITY)
            manifest = json.loads(zf.read("manifest.json"))
            names = set(zf.namelist()) - {"manifest.json", "manifest.csv"}
            for row in manifest["carves"]:
                digest = hashlib.sha256()
                with zf.open(row["file"]) as member:
                    while piece := member.read(CHUNK_SIZE):
                        digest.update(piece)
                if digest.hexdigest() != row["sha256"]:
                    raise CliError(
                        f"{printable(row['file'])}: SHA-256 {digest.hexdigest()}, "
                        f"manifest.json says {row['sha256']}",
                        EXIT_INTEGRITY,
                    )
                names.discard(row["file"])
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise CliError(f"the ZIP is not whole or not an export: {exc}", EXIT_INTEGRITY) from exc
    count = len(manifest["carves"])
    if names or (expected_carves is not None and count != expected_carves):
        raise CliError(
            f"the ZIP holds {count} carves listed and {len(names)} unlisted; "
            f"the server announced {expected_carves}",
            EXIT_INTEGRITY,
        )
    return count


def cmd_export(args: argparse.Namespace, api: Api) -> int:
    name = f"campaign_{_SAFE.sub('_', args.request_id)[:64]}.zip"
    output = Path(args.output) if args.output else Path(name)
    part = output.with_name(output.name + ".part")
    state_path = output.with_name(output.name + ".part.json")
    size, state = _download(api, args, part, state_path)
    announced = state.get("carves", "")
    try:
        count = verify_export(part, int(announced) if announced.isdigit() else None)
    except CliError:
        part.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        raise
    os.replace(part, output)
    state_path.unlink(missing_ok=True)
    if args.json:
        print_json({"path": str(output), "size": size, "carves": count, "as_of": state["as_of"]})
    else:
        print(
            f"{printable(str(output))}: {count} carves, {human_size(size)}, as of "
            f"{state['as_of']}; every archive matches its SHA-256 in manifest.json"
        )
    return EXIT_OK
