"""carvectl's evidence-custody commands: holds, case tags, expiry, and custody records.

``hold``, ``release`` and ``expiry`` need the admin policy; ``cases``, ``custody`` and
``custody-keys`` the read policy; ``verify`` needs nothing but files: it checks a saved
record offline against a saved public key (``shared.custody``), and an archive against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from clients.carvectl.api import Api
from clients.carvectl.commands import resolve_carve
from clients.carvectl.errors import EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE, CliError
from clients.carvectl.render import format_carve, print_json, printable
from shared.custody import CustodyError, archive_matches, load_keys, verify


def _show(args: argparse.Namespace, carve: dict[str, Any]) -> int:
    if args.json:
        print_json(carve)
    else:
        print(format_carve(carve))
    return EXIT_OK


def cmd_hold(args: argparse.Namespace, api: Api) -> int:
    carve_id, _ = resolve_carve(api, args.carve_id)
    body = {"case": args.case, "reason": args.reason}
    return _show(args, api.send("PUT", api.url_of(carve_id, "hold"), body))


def cmd_release(args: argparse.Namespace, api: Api) -> int:
    carve_id, _ = resolve_carve(api, args.carve_id)
    return _show(args, api.send("DELETE", api.url_of(carve_id, "hold", args.case)))


def cmd_cases(args: argparse.Namespace, api: Api) -> int:
    carve_id, carve = resolve_carve(api, args.carve_id)
    if args.add or args.remove:
        body = {"add": args.add or [], "remove": args.remove or []}
        carve = api.send("PATCH", api.url_of(carve_id, "cases"), body)
    if args.json:
        print_json(carve.get("cases") or [])
    else:
        print("\n".join(printable(str(c)) for c in carve.get("cases") or []) or "(no cases)")
    return EXIT_OK


def cmd_expiry(args: argparse.Namespace, api: Api) -> int:
    carve_id, _ = resolve_carve(api, args.carve_id)
    when = None if args.when == "retention" else args.when
    return _show(args, api.send("PUT", api.url_of(carve_id, "expiry"), {"expires_at": when}))


def _save(text: bytes, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text.decode() + "\n")
        return
    target = Path(out)
    part = target.with_name(target.name + ".part")
    part.write_bytes(text)
    os.replace(part, target)


def cmd_custody(args: argparse.Namespace, api: Api) -> int:
    carve_id, _ = resolve_carve(api, args.carve_id)
    response = api.request(api.url_of(carve_id, "custody"))
    body = api.checked(response)
    _save(body, args.out)
    if args.out and not args.quiet:
        print(f"custody record of {carve_id} saved to {printable(args.out)}", file=sys.stderr)
    return EXIT_OK


def cmd_custody_keys(args: argparse.Namespace, api: Api) -> int:
    body = api.checked(api.request(f"{api.server}/api/v1/custody/keys"))
    _save(body, args.out)
    return EXIT_OK


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while piece := fh.read(1 << 20):
            digest.update(piece)
            size += len(piece)
    return digest.hexdigest(), size


def cmd_verify(args: argparse.Namespace) -> int:
    """Offline: no server, no token, no Vault."""
    try:
        document = json.loads(Path(args.record).read_bytes())
    except ValueError as exc:
        raise CliError(f"{printable(args.record)} is not JSON: {exc}", EXIT_USAGE) from exc
    try:
        keys = load_keys(Path(args.keys).read_text())
        record = verify(document, keys)
        if args.archive:
            archive_matches(record, *_sha256(Path(args.archive)))
    except CustodyError as exc:
        raise CliError(f"NOT VERIFIED: {exc}", EXIT_INTEGRITY) from exc
    carve = record.get("carve") or {}
    signed = record["signed_with"]
    summary = {
        "verified": True,
        "carve_id": carve.get("carve_id"),
        "archive_sha256": (record.get("archive") or {}).get("sha256"),
        "archive_checked": bool(args.archive),
        "issued_at": record.get("issued_at"),
        "key": signed.get("key"),
        "key_version": signed.get("version"),
    }
    if args.json:
        print_json(summary)
    else:
        what = " and the archive matches it" if args.archive else ""
        print(
            printable(
                f"verified: custody record of carve {carve.get('carve_id')} issued "
                f"{record.get('issued_at')}, signed by {signed.get('key')} "
                f"version {signed.get('version')}{what}"
            )
        )
    return EXIT_OK
