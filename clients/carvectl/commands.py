"""carvectl's commands against the download service: list, show, files, get and extract."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clients.carvectl import lookup, members
from clients.carvectl.api import Api, Carve
from clients.carvectl.errors import (
    EXIT_AMBIGUOUS,
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_OK,
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
    human_size,
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
            q=args.search,
            sort=args.sort,
            verdict=args.verdict,
            case=getattr(args, "case", None),
            held="true" if getattr(args, "held", False) else None,
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


def _all_pages(api: Api, **query: Any) -> list[dict[str, Any]]:
    """Every carve a query finds, up to ``lookup.MAX_CANDIDATES`` (a bounded walk)."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(found) < lookup.MAX_CANDIDATES:
        page = api.list_carves(limit=100, cursor=cursor, **query)
        found += _dicts(page.get("carves"), "carves")
        if not (cursor := page.get("next_cursor") or None):
            break
    return found


def _ambiguous(ident: str, what: str, carves: list[dict[str, Any]]) -> CliError:
    for line in lookup.candidate_lines(carves):
        print(printable(line), file=sys.stderr)
    return CliError(
        f"{printable(ident)} is {what} of {len(carves)} carves (listed above): give more of the id",
        EXIT_AMBIGUOUS,
    )


def resolve_carve(api: Api, ident: str) -> tuple[str, Carve]:
    """The carve named by a carve id, a unique prefix of one, or a request id that exactly
    one carve has. Several: they are listed, and the exit code is EXIT_AMBIGUOUS."""
    if lookup.could_be_carve_id(ident):
        try:
            return ident, api.carve(ident)
        except CliError as exc:
            if exc.code != EXIT_NOT_FOUND:
                raise
        # q finds id prefixes (and more: request ids, hosts, paths): keep the id prefixes.
        prefixed = [c for c in _all_pages(api, q=ident) if str(c["carve_id"]).startswith(ident)]
        if len(prefixed) == 1:
            return str(prefixed[0]["carve_id"]), api.carve(str(prefixed[0]["carve_id"]))
        if prefixed:
            raise _ambiguous(ident, "a prefix of the ids", prefixed)
    campaign = _all_pages(api, request_id=ident)
    if len(campaign) == 1:
        return str(campaign[0]["carve_id"]), campaign[0]
    if campaign:
        raise _ambiguous(ident, "the request id", campaign)
    raise CliError(
        f"no carve {printable(ident)} (as a carve id, id prefix or request id)", EXIT_NOT_FOUND
    )


def cmd_show(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    if args.json:
        print_json(carve)
    else:
        print(format_carve(carve))
        print("\n".join(format_triage(carve)))
    if carve.get("status") == "failed":
        warn(f"the carve failed: {one_line(str(carve.get('failure_reason') or '?'))}")
    return EXIT_OK


def cmd_files(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, _carve = resolve_carve(api, args.carve_id)
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


def _extract_members(args: argparse.Namespace, api: Api, carve: Carve, dest: Path) -> int | None:
    """Named paths from a carve with a whole manifest: only their bytes, through the member
    endpoint (``members``). None when the manifest cannot say (then: the whole archive)."""
    try:
        listing = api.files(args.carve_id)
    except CliError as exc:
        if exc.code in (EXIT_INTEGRITY, EXIT_NOT_FOUND):
            return None  # the archive itself will say what is wrong with it
        raise
    planned = members.plan(listing, args.paths)
    if planned is None:
        return None
    chosen, unmatched = planned
    report = members.extract_members(
        api, args.carve_id, chosen, dest, progress=_show_progress(args)
    )
    for selector in unmatched:
        warn(f"no member matches {printable(selector)}")
    if args.json:
        print_json(
            {
                "directory": str(dest),
                "extracted": report.files,
                "unmatched": unmatched,
                "bytes_fetched": report.bytes_fetched,
                "archive_size": carve.get("carve_size"),
            }
        )
    else:
        print(
            f"extracted {len(report.files)} member(s) to {printable(str(dest))} "
            f"({human_size(report.bytes_fetched)} fetched; the archive is "
            f"{human_size(carve.get('carve_size'))})"
        )
    return EXIT_NOT_FOUND if unmatched else EXIT_OK


def cmd_extract(args: argparse.Namespace, api: Api) -> int:
    args.carve_id, carve = resolve_carve(api, args.carve_id)
    dest = Path(args.directory)
    dest.mkdir(parents=True, exist_ok=True)
    if args.paths and (code := _extract_members(args, api, carve, dest)) is not None:
        return code
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
