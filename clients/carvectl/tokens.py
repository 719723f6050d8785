"""carvectl's Vault token: ``VAULT_TOKEN``, else ``$XDG_CONFIG_HOME/carvectl/token`` (0600)."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from clients.carvectl.render import warn


def token_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = env.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "carvectl" / "token"


def save_token(token: str, path: Path) -> None:
    """Write ``token`` to ``path`` (mode 0600, directory 0700), replacing it atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL|O_NOFOLLOW: never write the token through a symlink planted at the temporary name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an odd umask can only remove bits; make the mode exact anyway
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_token(env: Mapping[str, str] | None = None) -> str | None:
    """``VAULT_TOKEN``, else the token file's content, else None."""
    env = os.environ if env is None else env
    if token := env.get("VAULT_TOKEN", "").strip():
        return token
    path = token_file(env)
    try:
        with path.open(encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            token = fh.read().strip()
    except FileNotFoundError:
        return None
    if mode & 0o077:
        warn(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it")
    return token or None
