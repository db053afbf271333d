"""Reading the claims of ChatGPT's JWTs. We never verify signatures: upstream does; we only need
`exp` and the account claims to schedule refreshes and label accounts."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


class JWTError(ValueError):
    """The token is not a JWT whose claims we can read."""


def claims(token: str) -> dict[str, Any]:
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 64 * 1024:
        raise JWTError("not a JWT (expected three dot-separated parts)")
    payload = token.split(".")[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise JWTError("JWT payload is not base64url-encoded JSON") from None
    if not isinstance(data, dict):
        raise JWTError("JWT payload is not a JSON object")
    return data


def expiry(token: str) -> float:
    exp = claims(token).get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise JWTError("JWT has no numeric exp claim")
    return float(exp)


def identity(id_token: str, access_token: str) -> dict[str, str | None]:
    """account_id, email and plan from whichever token carries them."""
    found: dict[str, str | None] = {"account_id": None, "email": None, "plan": None}
    for token in (id_token, access_token):
        try:
            data = claims(token)
        except JWTError:
            continue
        auth = data.get(AUTH_CLAIM) if isinstance(data.get(AUTH_CLAIM), dict) else {}
        profile = data.get(PROFILE_CLAIM) if isinstance(data.get(PROFILE_CLAIM), dict) else {}
        for key, value in (("account_id", auth.get("chatgpt_account_id")), ("plan", auth.get("chatgpt_plan_type")),
                           ("email", data.get("email") or profile.get("email"))):
            if found[key] is None and isinstance(value, str) and value:
                found[key] = value
    return found
