"""Role tokens for development: ``prognos token issue`` and the command line's own tokens.

Tokens are signed with the development key under ``<data_dir>/secrets`` that ``prognos up``
creates; the services verify them with its public half. Production issues tokens with its
own identity provider and key, and hands the services only the public key; compose's
``secrets`` job makes such a key pair with ``prognos token keygen``.
"""

from __future__ import annotations

import getpass
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import jwt
import typer

from prognos.core.auth import ADMIN_ROLE, ROLES, issue_token, load_private_key
from prognos.core.auth import write_secret as _write_secret
from prognos.core.config import Settings

if TYPE_CHECKING:
    from prognos.cli.certs import DevSecrets

__all__ = [
    "DEFAULT_TTL",
    "app",
    "cli_subject",
    "issue",
    "keygen",
    "parse_ttl",
    "token_for",
    "write_admin_token",
]

DEFAULT_TTL = timedelta(hours=12)
_ADMIN_TTL = timedelta(days=30)
_REISSUE_BEFORE = timedelta(minutes=10)
_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

_cache: dict[tuple[Path, str], tuple[str, datetime]] = {}
_cache_lock = threading.Lock()


def parse_ttl(text: str) -> timedelta:
    """Read a duration such as ``90s``, ``30m``, ``12h``, ``7d`` or plain seconds.

    Raises:
        ValueError: Not a positive duration.
    """
    match = _TTL.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a positive duration: {text!r} (try 30m, 12h, 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def cli_subject() -> str:
    """Whom the command line's own tokens name: the local user."""
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def _expiry(token: str) -> datetime | None:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return datetime.fromtimestamp(float(claims["exp"]), UTC)
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        return None


def _usable(token: str, expires: datetime | None) -> bool:
    return bool(token) and expires is not None and expires - datetime.now(UTC) > _REISSUE_BEFORE


def token_for(secrets: DevSecrets, role: str) -> str:
    """A token with ``role`` for the local user, signed with the development key.

    Reuses the one in ``tokens/<role>.token`` (and in memory) until it is about to expire.

    Args:
        secrets: The development secrets (``DevSecrets(<data_dir>/secrets)``).
        role: One role, e.g. ``auditor``.

    Raises:
        FileNotFoundError: The secrets hold no token signing key (run ``prognos up`` once).
    """
    key = (secrets.root.resolve(), role)
    with _cache_lock:
        cached = _cache.get(key)
        if cached and _usable(*cached):
            return cached[0]
        path = secrets.tokens_dir / f"{role}.token"
        token = path.read_text().strip() if path.is_file() else ""
        expires = _expiry(token) if token else None
        if not _usable(token, expires):
            token = issue_token(
                load_private_key(secrets.token_signing_key), cli_subject(), [role], DEFAULT_TTL
            )
            expires = _expiry(token)
            secrets.tokens_dir.mkdir(parents=True, exist_ok=True)
            _write_secret(path, token.encode() + b"\n")
        assert expires is not None
        _cache[key] = (token, expires)
        return token


def write_admin_token(secrets: DevSecrets) -> Path:
    """Write ``admin.token`` for the person running the demo unless a usable one exists."""
    path = secrets.admin_token
    if path.is_file():
        token = path.read_text().strip()
        if _usable(token, _expiry(token)):
            return path
    token = issue_token(
        load_private_key(secrets.token_signing_key), cli_subject(), [ADMIN_ROLE], _ADMIN_TTL
    )
    _write_secret(path, token.encode() + b"\n")
    return path


_DATA_DIR_HELP = "Data directory (default: $PROGNOS_DATA_DIR, else .prognos)."

# --- commands ---------------------------------------------------------------------------

app = typer.Typer(help="Role tokens for development.", no_args_is_help=True)


@app.command("issue")
def issue(
    role: Annotated[
        list[str],
        typer.Option(help=f"A role to grant ({', '.join(ROLES)}); repeat for several."),
    ],
    subject: Annotated[
        str, typer.Option(help="Whom the token is for, e.g. alice or gateway:plant-7.")
    ],
    ttl: Annotated[str, typer.Option(help="How long it is valid: 30m, 12h, 7d.")] = "12h",
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    key: Annotated[
        Path | None,
        typer.Option(help="Ed25519 signing key (default: the data directory's development key)."),
    ] = None,
) -> None:
    """Print a signed token granting ROLE to SUBJECT."""
    from prognos.cli.certs import DevSecrets

    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        raise typer.BadParameter(f"unknown role {', '.join(unknown)}; roles: {', '.join(ROLES)}")
    try:
        lifetime = parse_ttl(ttl)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    settings = Settings.load("cli", **({"data_dir": data_dir} if data_dir else {}))
    key_path = key or DevSecrets(settings.secrets_dir).token_signing_key
    if not key_path.is_file():
        typer.echo(f"no signing key at {key_path}: run `prognos up` once, or pass --key", err=True)
        raise typer.Exit(1)
    typer.echo(issue_token(load_private_key(key_path), subject, role, lifetime))


@app.command("keygen")
def keygen(
    out: Annotated[
        Path | None,
        typer.Option(help="Directory to write to (default: <data dir>/secrets)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an existing pair (every token it signed stops working).")
    ] = False,
) -> None:
    """Make the Ed25519 pair that signs tokens and verifies them, unless it exists.

    Writes token-signing.key (for whoever issues tokens) and token-signing.pub (for the
    services' PROGNOS_AUTH_PUBLIC_KEY_FILE), and prints the public key's path.
    """
    from prognos.cli.certs import DevSecrets, ensure_token_key

    target = out or Settings.load("cli", **({"data_dir": data_dir} if data_dir else {})).secrets_dir
    secrets = DevSecrets(target)
    ensure_token_key(secrets, force=force)
    typer.echo(str(secrets.token_public_key))
