"""Simulated ChatGPT accounts: tokens that expire and rotate, and usage windows that fill and reset."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

PRIMARY_WINDOW_MINUTES = 300
SECONDARY_WINDOW_MINUTES = 10080


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT (alg none), the form the Codex CLI reads its claims from."""
    header = _b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{_b64(orjson.dumps(claims))}.sig"


@dataclass(slots=True)
class Window:
    minutes: int
    limit_tokens: int
    used_tokens: int = 0
    started_at: float = field(default_factory=time.time)

    def roll(self, now: float) -> None:
        if now >= self.reset_at:
            self.used_tokens = 0
            self.started_at = now

    @property
    def reset_at(self) -> float:
        return self.started_at + self.minutes * 60

    def used_percent(self) -> float:
        return min(100.0, 100.0 * self.used_tokens / self.limit_tokens) if self.limit_tokens else 0.0

    def exhausted(self) -> bool:
        return self.used_tokens >= self.limit_tokens

    def view(self, now: float) -> dict[str, Any]:
        return {
            "used_percent": round(self.used_percent(), 2),
            "limit_window_seconds": self.minutes * 60,
            "reset_after_seconds": max(0, int(self.reset_at - now)),
            "reset_at": int(self.reset_at),
        }


@dataclass(slots=True)
class SimAccount:
    index: int
    account_id: str
    email: str
    plan: str
    token_ttl_s: float
    primary: Window
    secondary: Window
    access_token: str = ""
    refresh_token: str = ""
    id_token: str = ""
    access_expires_at: float = 0.0
    # Access tokens stay valid until they expire, even after a refresh issued newer ones.
    valid_access: dict[str, float] = field(default_factory=dict)
    used_refresh: set[str] = field(default_factory=set)
    revoked: bool = False
    refreshes: int = 0  # refresh_token grants served
    reused: int = 0  # refresh_token grants refused because the token was already used
    # Set by `expire` with `hold_stale`: answers to stale credentials (the expired token's 401s after the first,
    # refusals of a reused refresh token) wait until a newer access token of the account has been used, so
    # they arrive after the client's refresh finished.
    renewed: asyncio.Event | None = None
    first_401_sent: bool = False
    held: int = 0  # answers so held

    def issue_tokens(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        exp = int(now + self.token_ttl_s)
        auth = {
            "chatgpt_account_id": self.account_id,
            "chatgpt_plan_type": self.plan,
            "chatgpt_user_id": f"user-{self.account_id}",
        }
        nonce = secrets.token_hex(6)
        self.access_token = make_jwt({
            "exp": exp, "iat": int(now), "jti": nonce, "https://api.openai.com/auth": auth,
            "https://api.openai.com/profile": {"email": self.email},
        })
        self.id_token = make_jwt({
            "exp": exp, "iat": int(now), "email": self.email, "https://api.openai.com/auth": auth,
        })
        if self.refresh_token:
            self.used_refresh.add(self.refresh_token)
        self.refresh_token = f"rt_sim_{secrets.token_urlsafe(24)}"
        self.access_expires_at = float(exp)
        self.valid_access[self.access_token] = float(exp)
        for token, expires in list(self.valid_access.items()):
            if expires <= now:
                del self.valid_access[token]

    def record_usage(self, tokens: int, now: float) -> None:
        for window in (self.primary, self.secondary):
            window.roll(now)
            window.used_tokens += tokens

    def limiting_window(self, now: float) -> Window | None:
        """The window that blocks this account right now, if any."""
        for window in (self.primary, self.secondary):
            window.roll(now)
        blocked = [w for w in (self.primary, self.secondary) if w.exhausted()]
        return max(blocked, key=lambda w: w.reset_at) if blocked else None

    def rate_limit_headers(self, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, window in (("primary", self.primary), ("secondary", self.secondary)):
            window.roll(now)
            headers[f"x-codex-{name}-used-percent"] = f"{window.used_percent():.1f}"
            headers[f"x-codex-{name}-window-minutes"] = str(window.minutes)
            headers[f"x-codex-{name}-reset-at"] = str(int(window.reset_at))
            headers[f"x-codex-{name}-reset-after-seconds"] = str(max(0, int(window.reset_at - now)))
        headers["x-codex-credits-has-credits"] = "False"
        headers["x-codex-credits-unlimited"] = "False"
        headers["x-codex-credits-balance"] = "0"
        return headers

    def usage_view(self, now: float) -> dict[str, Any]:
        """The `/wham/usage` body."""
        return {
            "plan_type": self.plan,
            "rate_limit": {
                "allowed": self.limiting_window(now) is None,
                "limit_reached": self.limiting_window(now) is not None,
                "primary_window": self.primary.view(now),
                "secondary_window": self.secondary.view(now),
            },
            "credits": {"has_credits": False, "unlimited": False, "balance": "0"},
        }

    def auth_json(self) -> dict[str, Any]:
        """The Codex CLI's `auth.json` for this account."""
        return {
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "account_id": self.account_id,
            },
            "last_refresh": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        }


def make_accounts(count: int, *, token_ttl_s: float, primary_limit_tokens: int,
                  secondary_limit_tokens: int, seed: str = "") -> list[SimAccount]:
    accounts = []
    for i in range(count):
        account = SimAccount(
            index=i,
            account_id=f"acct-sim-{seed}{i + 1:02d}",
            email=f"sim{i + 1}@codexlb.invalid",
            plan="pro" if i % 3 == 2 else "plus",
            token_ttl_s=token_ttl_s,
            primary=Window(PRIMARY_WINDOW_MINUTES, primary_limit_tokens),
            secondary=Window(SECONDARY_WINDOW_MINUTES, secondary_limit_tokens),
        )
        account.issue_tokens()
        accounts.append(account)
    return accounts
