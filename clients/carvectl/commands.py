"""carvectl's commands against the download service: list, show, files, get and extract."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clients.carvectl import lookup
from clients.carvectl.api import Api, Carve
from clients.carvectl.errors import (
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)
from clients.carvectl.extract import ExtractReport, extract_archive
from clients.carvectl.fetch import fetch_archive, safe_basename
from clients.carvectl.render import (
    CARVE_HEADERS,
    FILE_HEADERS,
    carve_row,
    file_row,
    format_carve,
    format_table,
    note,
    one_line,
    print_json,
    printable,
    warn,
)
from clients.carvectl.triage import format_triage
from shared import tarsafe


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _dicts(value: object, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise CliError(f"unexpected answer from the server: {what} is not a list of objects")
    return value


def cmd_list(args: argparse.Namespace, api: Api) -> int:
    carves: list[dict[str, Any]] = []
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = api.list_carves(
            status=args.status,
            since=args.since,
            limit=args.limit,
            cursor=cursor,
            device=args.device,
            request_id=args.request_id,
            verdict=args.verdict,
        )
        carves.extend(_dicts(page.get("carves"), "carves"))
        cursor = page.get("next_cursor") or None
        if not cursor or not args.all:
            break
        if cursor in seen:
            raise CliError("the server returned the same cursor twice: stopping")
        seen.add(cursor)
    if args.json:
        print_json(carves)
    else:
        print(format_table(CARVE_HEADERS, [carve_row(c) for c in carves], right={2, 3}))
    if cursor:
        note("more carves: add --all to list them all", args.quiet)
    return EXIT_OK


def resolve_carve(api: Api, ident: str) -> tuple[str, Carve]:
    """The carve named by a carve id, or by a request id that exactly one carve has."""
    missing = CliError(
        f"no carve {printable(ident)} (as a carve id or a request id)", EXIT_NOT_FOUND
    )
    if lookup.could_be_carve_id(ident):
        try:
            return ident, api.carve(ident)
        except CliError as exc:
            if exc.code != EXIT_NOT_FOUND:
                raise
    page = api.list_carves(request_id=ident, limit=2)
    try:
        found = lookup.one_match(_dicts(page.get("carves"), "carves"), ident)
    except ValueError as exc:
        raise CliError(f"{printable(str(exc))}: give the carve id", EXIT_USAGE) from exc
    if found is None:
        raise missing
    return found, api.carve(found)


def cmd_show(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    if args.json:
        print_json(carve)
    else:
        print(format_carve(carve))
        print("\n".join(format_triage(carve)))
    return EXIT_OK


def cmd_files(args: argparse.Namespace, api: Api) -> int:
    listing = api.files(args.carve_id, args.limit)
    if args.json:
        print_json(listing)
        return EXIT_OK
    members = _dicts(listing.get("members", []), "members")
    print(format_table(FILE_HEADERS, [file_row(m) for m in members], right={2}))
    if listing.get("truncated"):
        warn(f"only the first {len(members)} members are listed: raise --limit for more")
    return EXIT_OK


def default_filename(carve_id: str, carve: Mapping[str, Any]) -> str:
    if name := safe_basename(carve.get("filename")):
        return name
    suffix = ".tar.zst" if carve.get("compression") == "zstd" else ".tar"
    return f"carve_{safe_basename(carve_id) or 'unknown'}{suffix}"


def cmd_get(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    named_by_user = bool(args.output) and not Path(args.output).is_dir()
    if named_by_user:
        output = Path(args.output)
    else:
        output = Path(args.output or ".") / default_filename(args.carve_id, carve)
    part = output.with_name(output.name + ".part")
    fetched = fetch_archive(
        api,
        args.carve_id,
        carve,
        part,
        expect=args.expect_sha256,
        progress=_show_progress(args),
        quiet=args.quiet,
    )
    if not named_by_user and fetched.disposition_name:
        output = output.with_name(fetched.disposition_name)
    os.replace(part, output)
    if args.json:
        print_json(
            {
                "path": str(output),
                "sha256": fetched.sha256,
                "size": fetched.size,
                "resumed_from": fetched.resumed_from,
            }
        )
    else:
        # sha256sum's format, so the line can be fed to `sha256sum -c`.
        print(f"{fetched.sha256}  {printable(str(output))}")
    return EXIT_OK


def _temporary_archive(dest: Path) -> Path:
    # Next to DIR (not in it, so it is never taken for a member), else in the system tempdir.
    for directory in (dest.resolve().parent, None):
        try:
            fd, name = tempfile.mkstemp(prefix=".carvectl-", suffix=".part", dir=directory)
        except OSError:
            continue
        os.close(fd)
        return Path(name)
    raise CliError("cannot create a temporary file for the download")


def _extract_exit(report: ExtractReport) -> int:
    for selector in report.unmatched:
        warn(f"no member matches {printable(selector)}")
    if report.refused:
        warn(f"{len(report.refused)} member(s) refused as unsafe")
        return EXIT_INTEGRITY
    return EXIT_NOT_FOUND if report.unmatched else EXIT_OK


def _manifest_hashes(api: Api, args: argparse.Namespace) -> dict[str, str]:
    try:
        listing = api.files(args.carve_id)
    except CliError as exc:
        warn(f"files not checked against the carve's manifest: {exc.message}")
        return {}
    return lookup.manifest_hashes(_dicts(listing.get("members", []), "members"))


def cmd_extract(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    dest = Path(args.directory)
    dest.mkdir(parents=True, exist_ok=True)
    archive = _temporary_archive(dest)
    try:
        fetched = fetch_archive(
            api,
            args.carve_id,
            carve,
            archive,
            resume=False,
            expect=args.expect_sha256,
            progress=_show_progress(args),
            quiet=args.quiet,
        )
        limits = tarsafe.Limits(max_bytes=args.max_bytes, max_seconds=args.max_seconds)
        try:
            report = extract_archive(
                archive, dest, args.paths, zstd=carve.get("compression") == "zstd", limits=limits
            )
        except tarsafe.Refused as exc:
            raise CliError(
                f"the archive is refused ({exc.reason}): {one_line(exc.message)}; nothing written",
                EXIT_INTEGRITY,
            ) from exc
        except tarsafe.Malformed as exc:
            raise CliError(f"the archive cannot be read: {one_line(str(exc))}") from exc
    finally:
        archive.unlink(missing_ok=True)
    # The finalizer's manifest: every extracted file is checked against its SHA-256.
    if mismatched := lookup.check_extracted(dest, report.files, _manifest_hashes(api, args)):
        for line in mismatched:
            warn(printable(line))
        raise CliError(f"{len(mismatched)} file(s) differ from the manifest", EXIT_INTEGRITY)
    if args.json:
        print_json(
            {
                "directory": str(dest),
                "sha256": fetched.sha256,
                "extracted": report.extracted,
                "refused": [{"name": n, "reason": r} for n, r in report.refused],
                "unmatched": report.unmatched,
            }
        )
    else:
        print(f"extracted {len(report.extracted)} member(s) to {printable(str(dest))}")
    return _extract_exit(report)
