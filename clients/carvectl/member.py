"""``carvectl member ID INDEX``: one member of a carve's archive, by its position.

The listing (``carvectl files``, its INDEX column) gives each member's position in the
archive. Fetching by position reaches members a path cannot name: a name holding CR, LF or
another control byte (the host chose it), or an earlier member a later one at the same path
supersedes. The bytes are checked against the manifest's SHA-256 (``X-Carve-Member-SHA256``)
and the announced length before the file takes its name.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from pathlib import Path

from clients.carvectl.api import Api, error_from_response
from clients.carvectl.commands import resolve_carve
from clients.carvectl.errors import EXIT_INTEGRITY, EXIT_OK, CliError
from clients.carvectl.fetch import check_sha256, content_disposition_filename
from clients.carvectl.render import print_json, printable, warn

_PIECE = 1 << 20


def cmd_member(args: argparse.Namespace, api: Api) -> int:
    carve_id, _ = resolve_carve(api, args.carve_id)
    response = api.member_at(carve_id, args.index)
    with contextlib.closing(response):
        if response.status_code != 200:
            raise error_from_response(response)
        named = bool(args.output) and not Path(args.output).is_dir()
        name = content_disposition_filename(response.headers.get("Content-Disposition"))
        output = (
            Path(args.output)
            if named
            else Path(args.output or ".") / (name or f"member_{args.index}")
        )
        part = output.with_name(output.name + ".part")
        digest, size = hashlib.sha256(), 0
        with part.open("wb") as fh:
            for piece in response.iter_content(_PIECE):
                fh.write(piece)
                digest.update(piece)
                size += len(piece)
        declared = response.headers.get("Content-Length")
    actual = digest.hexdigest()
    mismatches, warnings = check_sha256(
        actual, {"X-Carve-Member-SHA256": response.headers.get("X-Carve-Member-SHA256")}, None
    )
    if declared is not None and int(declared) != size:
        mismatches.append(f"Content-Length says {declared} bytes, {size} came")
    if mismatches:
        part.unlink(missing_ok=True)
        raise CliError(
            f"member {args.index} is not what the server announced: {'; '.join(mismatches)}",
            EXIT_INTEGRITY,
        )
    for warning in warnings:
        if not args.quiet:
            warn(warning)
    os.replace(part, output)
    if args.json:
        print_json({"path": str(output), "sha256": actual, "size": size, "index": args.index})
    else:
        print(f"{actual}  {printable(str(output))}")
    return EXIT_OK
