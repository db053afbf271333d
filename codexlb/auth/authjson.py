"""Reading the Codex CLI's `auth.json` (ChatGPT login form) into tokens and an identity.

Hostile or broken files are refused with one line saying why; nothing is half-read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson

from codexlb.account import Tokens
from codexlb.auth import jwt

MAX_BYTES = 1024 * 1024
FILE_NAME = "auth.json"


class AuthFileError(ValueError):
    """The file cannot be imported; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Login:
    account_id: str
    email: str | None
    plan: str | None
    tokens: Tokens


def _text(tokens: dict, key: str, origin: str) -> str:
    value = tokens.get(key)
    if not isinstance(value, str) or not value.strip():
        raise AuthFileError(f"{origin}: tokens.{key} is missing or not a string")
    return value.strip()


def from_tokens(access_token: str, refresh_token: str, id_token: str, *, account_id: str | None = None,
                issued_at: float, origin: str) -> Login:
    """A Login from raw tokens (a file, an OAuth exchange); `origin` names the source in errors."""
    try:
        expires = jwt.expiry(access_token)
    except jwt.JWTError as exc:
        raise AuthFileError(f"{origin}: access_token: {exc}") from None
    who = jwt.identity(id_token, access_token)
    account = account_id or who["account_id"]
    if not account:
        raise AuthFileError(f"{origin}: no ChatGPT account id in account_id or the token claims")
    if who["account_id"] and account_id and who["account_id"] != account_id:
        raise AuthFileError(f"{origin}: account_id does not match the token's account")
    return Login(account, who["email"], who["plan"],
                 Tokens(access_token, refresh_token, id_token, expires, issued_at))


def read(path: Path) -> Login:
    """An auth.json file, or the one in a directory (a Codex home such as ~/.codex)."""
    if path.is_dir():
        if not (path / FILE_NAME).is_file():
            raise AuthFileError(f"{path}: a directory with no {FILE_NAME} in it; give the Codex CLI's "
                                f"{FILE_NAME} file (e.g. ~/.codex/{FILE_NAME})")
        path = path / FILE_NAME
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise AuthFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise AuthFileError(f"{path}: larger than {MAX_BYTES // 1024} KiB; not an auth.json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if raw.lstrip().startswith(b"{"):
            raise AuthFileError(f"{path}: not valid JSON (truncated?)") from None
        raise AuthFileError(f"{path}: not an auth.json (expected the JSON file the Codex CLI writes at sign-in, "
                            f"e.g. ~/.codex/{FILE_NAME})") from None
    return parse(data, str(path))


def parse(data: object, origin: str) -> Login:
    """An auth.json already decoded from JSON; `origin` names it in errors."""
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), dict):
        raise AuthFileError(f"{origin}: no \"tokens\" object; is this a ChatGPT-login auth.json?")
    tokens = data["tokens"]
    account_id = tokens.get("account_id")
    if account_id is not None and (not isinstance(account_id, str) or not account_id):
        raise AuthFileError(f"{origin}: tokens.account_id is not a string")
    issued_at = 0.0
    last_refresh = data.get("last_refresh")
    if last_refresh is not None:
        try:
            issued_at = datetime.fromisoformat(str(last_refresh).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise AuthFileError(f"{origin}: last_refresh is not an ISO date") from None
    return from_tokens(_text(tokens, "access_token", origin), _text(tokens, "refresh_token", origin),
                       _text(tokens, "id_token", origin), account_id=account_id, issued_at=issued_at, origin=origin)


def to_json(login: Login) -> dict[str, object]:
    """The auth.json form of a Login (what the CLI sends a running server)."""
    t = login.tokens
    return {
        "OPENAI_API_KEY": None,
        "tokens": {"id_token": t.id_token, "access_token": t.access_token, "refresh_token": t.refresh_token,
                   "account_id": login.account_id},
        "last_refresh": datetime.fromtimestamp(t.last_refresh, timezone.utc).isoformat(),
    }
