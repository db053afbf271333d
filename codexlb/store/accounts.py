"""Accounts as rows: the mapping, with every token sealed, and the statements that read and write them."""

from __future__ import annotations

import time
from typing import Any

from codexlb.account import Account, Status, Tokens, Window
from codexlb.store.secrets import SecretBox

_COLUMNS = (
    "id", "alias", "email", "plan", "status", "status_until", "status_reason",
    "access_token", "refresh_token", "id_token", "access_expires_at", "last_refresh",
    "primary_used_percent", "primary_window_minutes", "primary_reset_at",
    "secondary_used_percent", "secondary_window_minutes", "secondary_reset_at",
    "created_at", "updated_at",
)
UPSERT = (
    f"INSERT INTO accounts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:] if c != 'created_at')}"
)
SELECT_ALL = f"SELECT {', '.join(_COLUMNS)} FROM accounts ORDER BY created_at, id"
SELECT_ONE = f"SELECT {', '.join(_COLUMNS)} FROM accounts WHERE id = ?"
DELETE = "DELETE FROM accounts WHERE id = ?"


def _window(window: Window | None) -> tuple[Any, Any, Any]:
    return (None, None, None) if window is None else (window.used_percent, window.window_minutes, window.reset_at)


def to_row(account: Account, box: SecretBox) -> tuple[Any, ...]:
    """A snapshot taken on the loop, so later changes to `account` cannot race the write."""
    t = account.tokens
    return (
        account.id, account.alias, account.email, account.plan, account.status.value, account.status_until,
        account.status_reason,
        box.seal(t.access_token, f"{account.id}:access"), box.seal(t.refresh_token, f"{account.id}:refresh"),
        box.seal(t.id_token, f"{account.id}:id"), t.access_expires_at, t.last_refresh,
        *_window(account.primary), *_window(account.secondary), account.created_at, time.time(),
    )


def from_row(row: tuple[Any, ...], box: SecretBox) -> Account:
    r = dict(zip(_COLUMNS, row))
    windows = []
    for name in ("primary", "secondary"):
        used = r[f"{name}_used_percent"]
        windows.append(None if used is None else Window(used, r[f"{name}_window_minutes"], r[f"{name}_reset_at"]))
    return Account(
        id=r["id"], alias=r["alias"], email=r["email"], plan=r["plan"],
        tokens=Tokens(
            box.open(r["access_token"], f"{r['id']}:access"), box.open(r["refresh_token"], f"{r['id']}:refresh"),
            box.open(r["id_token"], f"{r['id']}:id"), r["access_expires_at"], r["last_refresh"],
        ),
        status=Status(r["status"]), status_until=r["status_until"], status_reason=r["status_reason"],
        primary=windows[0], secondary=windows[1], created_at=r["created_at"],
    )
