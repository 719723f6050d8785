"""carvectl's command line: the parser, the dispatch to a command, errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from clients.carvectl.api import DEFAULT_SERVER, Api
from clients.carvectl.campaign import cmd_campaign, cmd_export
from clients.carvectl.commands import cmd_extract, cmd_files, cmd_get, cmd_list, cmd_show
from clients.carvectl.custody import (
    cmd_cases,
    cmd_custody,
    cmd_custody_keys,
    cmd_expiry,
    cmd_hold,
    cmd_release,
    cmd_verify,
)
from clients.carvectl.errors import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
)
from clients.carvectl.fetch import NOT_HASHED, SHA256_RE
from clients.carvectl.login import DEFAULT_VAULT_ADDR, cmd_login
from clients.carvectl.member import cmd_member
from clients.carvectl.render import printable, warn
from clients.carvectl.tokens import load_token
from shared import tarsafe
from shared.carves import Status
from shared.vault import is_loopback

STATUSES = tuple(status.value for status in Status)
VERDICTS = ("clean", "flagged", "incomplete")
SORTS = tuple(f"{sign}{key}" for key in ("created", "size", "status", "host") for sign in ("", "-"))
_DOWNLOADS = frozenset({"get", "member", "export", "extract"})  # they take --reason
ID_HELP = "a carve id, a unique prefix of one, or a request id only one carve has"


def _index_arg(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"not a member index (0 to 999999999): {text!r}")
    return int(text)


def _bounded_int(maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 1 and {maximum}")
        return value

    return parse


def _sha256_arg(text: str) -> str:
    value = text.strip().lower()
    if value == NOT_HASHED or SHA256_RE.fullmatch(value):
        return value
    raise argparse.ArgumentTypeError("expected 64 hex digits (or -1, osquery's 'not hashed')")


def _since_arg(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    # Sent with an explicit offset so the server never has to guess what a naive time means.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _add_common(parser: argparse.ArgumentParser, env: Mapping[str, str], *, top: bool) -> None:
    # The sub-parsers repeat the options with SUPPRESS defaults, so `carvectl list --json`
    # works as well as `carvectl --json list` without one resetting the other.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    server = env.get("CARVECTL_SERVER") or DEFAULT_SERVER
    parser.add_argument(
        "--server",
        default=default(server),
        help=f"download service URL (env CARVECTL_SERVER, now {server})",
    )
    parser.add_argument(
        "--cacert",
        default=default(env.get("CARVECTL_CACERT") or None),
        help="CA bundle to verify the server with (env CARVECTL_CACERT)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", default=default(False), help="no progress or notes"
    )


def _add_commands(sub: Any, env: Mapping[str, str]) -> None:
    def command(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        _add_common(parser, env, top=False)
        parser.set_defaults(handler=handler)
        return parser

    login = command("login", cmd_login, "log in to Vault and save the token")
    login.add_argument("--method", choices=("userpass", "token"), default="userpass")
    login.add_argument("--username", "-u")
    login.add_argument(
        "--vault-addr", help=f"Vault URL (env VAULT_ADDR, default {DEFAULT_VAULT_ADDR})"
    )

    listing = command("list", cmd_list, "list carves, newest first")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--verdict", choices=VERDICTS, help="triage verdict (carve-triage)")
    listing.add_argument("--since", type=_since_arg, help="ISO 8601; naive times are UTC")
    listing.add_argument("--limit", type=_bounded_int(1000), help="page size (1-1000)")
    listing.add_argument("--all", action="store_true", help="follow next_cursor to the end")
    listing.add_argument("--device", help="device certificate CN, or its SHA-256 fingerprint")
    listing.add_argument("--request-id", help="the request id osquery's query printed")

    listing.add_argument(
        "--search", "-s", metavar="TEXT", help="id or request id prefix, host or path part"
    )
    listing.add_argument("--sort", choices=SORTS, help="order (default -created: newest first)")
    listing.add_argument("--case", help="carves tagged with this case id, or held for it")
    listing.add_argument("--held", action="store_true", help="only carves under legal hold")

    show = command("show", cmd_show, "show one carve")
    show.add_argument("carve_id", metavar="ID", help=ID_HELP)

    campaign = command("campaign", cmd_campaign, "show every carve of one request id")
    campaign.add_argument("request_id", metavar="REQUEST_ID")
    campaign.add_argument("--all", action="store_true", help="every page of carves")

    export = command("export", cmd_export, "download a campaign as one ZIP (resumable, verified)")
    export.add_argument("request_id", metavar="REQUEST_ID")
    export.add_argument("-o", "--output", metavar="FILE", help="default: campaign_<id>.zip")
    _add_reason(export)

    files = command("files", cmd_files, "list the members of a carve's archive")
    files.add_argument("carve_id", metavar="ID", help=ID_HELP)
    files.add_argument("--limit", type=_bounded_int(100000))

    get = command("get", cmd_get, "download a carve's archive (resumable, verified)")
    get.add_argument("carve_id", metavar="ID", help=ID_HELP)
    get.add_argument("-o", "--output", metavar="FILE", help="default: the server's file name")
    get.add_argument("--expect-sha256", type=_sha256_arg, metavar="HEX")
    _add_reason(get)

    member = command("member", cmd_member, "download one member by its INDEX (carvectl files)")
    member.add_argument("carve_id", metavar="ID", help=ID_HELP)
    member.add_argument("index", type=_index_arg, metavar="INDEX")
    member.add_argument("-o", "--output", metavar="FILE", help="default: the member's name")
    _add_reason(member)

    extract = command(
        "extract", cmd_extract, "extract a carve's files safely (named ones: only their bytes)"
    )
    extract.add_argument("carve_id", metavar="ID", help=ID_HELP)
    extract.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="only these paths or dirs: fetched one by one when the carve has a manifest",
    )
    extract.add_argument("-d", "--directory", required=True, metavar="DIR")
    _add_reason(extract)
    extract.add_argument("--expect-sha256", type=_sha256_arg, metavar="HEX")
    defaults = tarsafe.Limits()
    _add_custody_commands(command)
    extract.add_argument(
        "--max-bytes",
        type=_bounded_int(1 << 62),
        default=defaults.max_bytes,
        help=f"decompressed bytes allowed per pass (default {defaults.max_bytes}, 16 GiB)",
    )
    extract.add_argument(
        "--max-seconds",
        type=float,
        default=defaults.max_seconds,
        help=f"seconds the extraction may take (default {defaults.max_seconds})",
    )


def _add_reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        metavar="TEXT",
        help="why you download (kept in the audit; required where the service says so)",
    )


def _add_custody_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    hold = command("hold", cmd_hold, "place a legal hold on a carve for a case (admin)")
    hold.add_argument("carve_id", metavar="ID", help=ID_HELP)
    hold.add_argument("--case", required=True, help="the case id, e.g. IR-2026-0042")
    hold.add_argument("--reason", required=True, help="why it is held")
    release = command("release", cmd_release, "release a case's legal hold (admin)")
    release.add_argument("carve_id", metavar="ID", help=ID_HELP)
    release.add_argument("--case", required=True)
    cases = command("cases", cmd_cases, "show, add or remove a carve's case ids")
    cases.add_argument("carve_id", metavar="ID", help=ID_HELP)
    cases.add_argument("--add", action="append", metavar="CASE")
    cases.add_argument("--remove", action="append", metavar="CASE")
    expiry = command("expiry", cmd_expiry, "set when a carve's bytes go (admin)")
    expiry.add_argument("carve_id", metavar="ID", help=ID_HELP)
    expiry.add_argument("when", metavar="TIME", help="ISO 8601 with a zone, or 'retention'")
    custody = command("custody", cmd_custody, "fetch a carve's signed custody record")
    custody.add_argument("carve_id", metavar="ID", help=ID_HELP)
    custody.add_argument("--out", "-o", metavar="FILE", help="default: standard output")
    keys = command("custody-keys", cmd_custody_keys, "save the custody signing public keys")
    keys.add_argument("--out", "-o", metavar="FILE", help="default: standard output")
    check = command("verify", cmd_verify, "check a saved custody record offline (and archive)")
    check.add_argument("record", metavar="RECORD")
    check.add_argument("archive", metavar="ARCHIVE", nargs="?")
    check.add_argument(
        "--keys", required=True, metavar="FILE", help="saved custody-keys JSON, or a PEM"
    )


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="carvectl",
        description="Client of the osquery carve download service.",
        epilog="exit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, env, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub, env)
    return parser


def _make_api(args: argparse.Namespace, session: requests.Session, env: Mapping[str, str]) -> Api:
    parsed = urllib.parse.urlsplit(args.server)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CliError(f"--server must be an http(s) URL, got {args.server!r}", EXIT_USAGE)
    if args.cacert and not Path(args.cacert).is_file():
        raise CliError(f"--cacert: no such file {args.cacert!r}", EXIT_USAGE)
    token = load_token(env)
    if token and parsed.scheme == "http" and not is_loopback(parsed.hostname):
        warn(f"sending your Vault token to {parsed.hostname} over plain HTTP")
    return Api(session, args.server, token, verify=args.cacert or True)


def _dispatch(
    args: argparse.Namespace, session: requests.Session | None, env: Mapping[str, str]
) -> int:
    if args.command == "login":
        return cmd_login(args, env)
    if args.command == "verify":
        return cmd_verify(args)  # offline: no server, no token
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(requests.Session())
        handler: Callable[[argparse.Namespace, Api], int] = args.handler
        api = _make_api(args, session, env)
        api.justification = getattr(args, "reason", None) if args.command in _DOWNLOADS else None
        return handler(args, api)


def run(
    argv: Sequence[str] | None = None,
    session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """``main`` with the seams tests need: the HTTP session and the environment."""
    env = os.environ if env is None else env
    try:
        args = build_parser(env).parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _dispatch(args, session, env)
    except CliError as exc:
        print(f"carvectl: {exc.message}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        where = f": {printable(str(exc.filename))}" if exc.filename else ""
        print(f"carvectl: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("carvectl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)
