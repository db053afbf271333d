"""An upstream ChatGPT account as the pool sees it: identity, tokens, status and usage windows."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(str, enum.Enum):
    ACTIVE = "active"
    RATE_LIMITED = "rate_limited"        # upstream said slow down; usable again at `status_until`
    QUOTA_EXCEEDED = "quota_exceeded"    # a usage window is full; usable again at `status_until`
    PAUSED = "paused"                    # the operator took it out of rotation
    REAUTH_REQUIRED = "reauth_required"  # its refresh token no longer works: log in again
    DEACTIVATED = "deactivated"          # upstream disabled the account


@dataclass(slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    id_token: str
    access_expires_at: float  # the access token's JWT `exp`
    last_refresh: float       # when these tokens were issued (epoch seconds)


@dataclass(slots=True)
class Window:
    """One upstream usage window (the 5-hour "primary" or the weekly "secondary")."""

    used_percent: float
    window_minutes: int
    reset_at: float  # epoch seconds


@dataclass(slots=True)
class Account:
    id: str  # the ChatGPT account id (`chatgpt-account-id`)
    alias: str
    email: str | None
    plan: str | None
    tokens: Tokens
    status: Status = Status.ACTIVE
    status_until: float | None = None
    status_reason: str | None = None
    primary: Window | None = None
    secondary: Window | None = None
    created_at: float = 0.0
    # Runtime only, never stored: what the pool is doing with the account right now.
    inflight: int = field(default=0, compare=False)
    last_used_at: float = field(default=0.0, compare=False)

    def usable(self, now: float) -> bool:
        """In rotation now; a timed status whose reset has passed counts as usable."""
        if self.status is Status.ACTIVE:
            return True
        if self.status in (Status.RATE_LIMITED, Status.QUOTA_EXCEEDED):
            return self.status_until is not None and self.status_until <= now
        return False
