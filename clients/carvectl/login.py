"""``carvectl login``: a Vault token from userpass or standard input, checked and saved."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from clients.carvectl.api import DEFAULT_POLICY, network_reason
from clients.carvectl.errors import EXIT_OK, EXIT_UNAUTHORIZED, EXIT_USAGE, CliError
from clients.carvectl.render import note, one_line, print_json, printable, warn
from clients.carvectl.tokens import save_token, token_file

DEFAULT_VAULT_ADDR = "http://127.0.0.1:8200"

T = TypeVar("T")


def _vault_call(action: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except (
        hvac.exceptions.InvalidRequest,
        hvac.exceptions.Unauthorized,
        hvac.exceptions.Forbidden,
    ) as exc:
        raise CliError(
            f"Vault refused the {action}: {one_line(str(exc))}", EXIT_UNAUTHORIZED
        ) from exc
    except hvac.exceptions.VaultError as exc:
        raise CliError(f"Vault error during the {action}: {one_line(str(exc))}") from exc
    except requests.RequestException as exc:
        raise CliError(f"cannot reach Vault for the {action}: {network_reason(exc)}") from exc


def _ask(prompt: str, *, secret: bool, otherwise: str) -> str:
    # Without a terminal getpass would fall back to echoing whatever stdin holds.
    if not sys.stdin.isatty():
        raise CliError(f"no terminal to ask on: {otherwise}", EXIT_USAGE)
    try:
        answer = getpass.getpass(prompt) if secret else input(prompt)
    except EOFError:
        raise CliError("no answer (end of input)", EXIT_USAGE) from None
    return answer.strip()


def _userpass_token(args: argparse.Namespace, env: Mapping[str, str], client: Any) -> str:
    username = args.username or _ask("Vault username: ", secret=False, otherwise="pass --username")
    password = env.get("CARVECTL_PASSWORD") or _ask(
        f"Vault password for {username}: ", secret=True, otherwise="set CARVECTL_PASSWORD"
    )
    if not username or not password:
        raise CliError("a username and a password are needed", EXIT_USAGE)
    result = _vault_call("login", lambda: client.auth.userpass.login(username, password))
    token = result.get("auth", {}).get("client_token") if isinstance(result, dict) else None
    if not isinstance(token, str) or not token:
        raise CliError("Vault's login answer holds no client token")
    return token


def _stdin_token() -> str:
    if sys.stdin.isatty():
        token = _ask("Vault token: ", secret=True, otherwise="pipe the token in")
    else:
        token = sys.stdin.readline()
    if not token.strip():
        raise CliError("no token on standard input", EXIT_USAGE)
    return token.strip()


def cmd_login(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    address = args.vault_addr or env.get("VAULT_ADDR") or DEFAULT_VAULT_ADDR
    verify: str | bool = env.get("VAULT_CACERT") or True
    # token="" stops hvac from picking up VAULT_TOKEN or ~/.vault-token for the login call.
    client = hvac.Client(url=address, token="", verify=verify, timeout=30)
    if args.method == "userpass":
        token = _userpass_token(args, env, client)
    else:
        token = _stdin_token()
    client.token = token
    lookup = _vault_call("token lookup", client.auth.token.lookup_self)
    data = lookup.get("data") if isinstance(lookup, dict) else None
    if not isinstance(data, dict):
        raise CliError("Vault's token lookup answer holds no data")
    path = token_file(env)
    save_token(token, path)
    return _report_login(args, env, data, path)


def _report_login(
    args: argparse.Namespace, env: Mapping[str, str], data: Mapping[str, Any], path: Path
) -> int:
    policies = list(data.get("policies") or [])
    identity = list(data.get("identity_policies") or [])
    if args.json:
        print_json(
            {
                "display_name": data.get("display_name"),
                "policies": policies,
                "identity_policies": identity,
                "expire_time": data.get("expire_time"),
                "token_file": str(path),
            }
        )
    else:
        print(f"logged in as {printable(str(data.get('display_name') or '?'))}")
        print(f"policies: {printable(', '.join(map(str, policies))) or '-'}")
        if identity:
            print(f"identity policies: {printable(', '.join(map(str, identity)))}")
        print(f"expires: {printable(str(data.get('expire_time') or 'never'))}")
        print(f"token saved to {path}")
    if DEFAULT_POLICY not in policies + identity:
        note(f"the token lacks {DEFAULT_POLICY}, the download service's default policy", args.quiet)
    if env.get("VAULT_TOKEN"):
        warn("VAULT_TOKEN is set and is used instead of the saved token")
    return EXIT_OK
