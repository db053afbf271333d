"""The one schema both engines hold, as versioned migrations.

Migration N (1-based) takes the schema from version N-1 to N. Append only; never edit a shipped one.
Types are written as {placeholders} each engine fills in (`render`), so the two schemas cannot drift.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value {blob} NOT NULL);
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        alias TEXT NOT NULL UNIQUE,
        email TEXT,
        plan TEXT,
        status TEXT NOT NULL,
        status_until {real},
        status_reason TEXT,
        access_token {blob} NOT NULL,
        refresh_token {blob} NOT NULL,
        id_token {blob} NOT NULL,
        access_expires_at {real} NOT NULL,
        last_refresh {real} NOT NULL,
        primary_used_percent {real},
        primary_window_minutes INTEGER,
        primary_reset_at {real},
        secondary_used_percent {real},
        secondary_window_minutes INTEGER,
        secondary_reset_at {real},
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL
    );
    CREATE TABLE usage (
        id {serial_pk},
        ts {real} NOT NULL,
        account_id TEXT,
        api_key_id TEXT,
        route TEXT,
        model TEXT,
        status INTEGER,
        error_code TEXT,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        duration_ms {real}
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_account_ts ON usage (account_id, ts);
    """,
    # 2: client API keys, stored as SHA-256 digests (see codexlb/keys.py); the key itself is never stored.
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash {blob} NOT NULL UNIQUE,
        created_at {real} NOT NULL,
        last_used_at {real},
        revoked_at {real},
        max_concurrency INTEGER
    );
    """,
    # 3: time to first byte per request, beside its total duration.
    """
    ALTER TABLE usage ADD COLUMN ttfb_ms {real};
    """,
    # 4: running as a fleet. `changes` is the change feed processes on one SQLite file follow (PostgreSQL
    # replicas are told by NOTIFY instead); `leases` are held by one replica at a time, for a while (background
    # jobs, a token refresh); `sticky` is the conversation -> account map; `owners` says which replica holds a
    # conversation's upstream socket, fenced by an epoch; `admin_sessions` are dashboard logins (a digest of
    # the cookie, never the cookie).
    """
    CREATE TABLE changes (id {serial_pk}, ts {real} NOT NULL, origin TEXT NOT NULL, kind TEXT NOT NULL,
                          ref TEXT NOT NULL);
    CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until {real} NOT NULL);
    CREATE TABLE sticky (key TEXT PRIMARY KEY, account_id TEXT NOT NULL, seen {real} NOT NULL);
    CREATE INDEX sticky_seen ON sticky (seen);
    CREATE TABLE owners (conversation TEXT PRIMARY KEY, replica TEXT NOT NULL, epoch INTEGER NOT NULL,
                         seen {real} NOT NULL);
    CREATE TABLE admin_sessions (digest {blob} PRIMARY KEY, csrf TEXT NOT NULL, expires_at {real} NOT NULL);
    """,
    # 5: per-key limits (`codexlb/key_limits`), and what each key spent in each limit's current window, counted
    # by every replica sharing the database (`key_spend`: one row per key, limit and window).
    """
    ALTER TABLE api_keys ADD COLUMN rpm {bigint};
    ALTER TABLE api_keys ADD COLUMN tokens_5h {bigint};
    ALTER TABLE api_keys ADD COLUMN tokens_day {bigint};
    ALTER TABLE api_keys ADD COLUMN tokens_week {bigint};
    ALTER TABLE api_keys ADD COLUMN models TEXT;
    ALTER TABLE api_keys ADD COLUMN expires_at {real};
    ALTER TABLE api_keys ADD COLUMN note TEXT;
    CREATE TABLE key_spend (key_id TEXT NOT NULL, kind TEXT NOT NULL, window_start {real} NOT NULL,
                            used {bigint} NOT NULL, PRIMARY KEY (key_id, kind, window_start));
    CREATE INDEX key_spend_window ON key_spend (window_start);
    """,
    # 6: the ledger (`store/ledger`): per request, its conversation (session id or prompt_cache_key) and turn, the
    # carrier, what the client sent against what went upstream, the recoveries and what they added, and what a
    # client resending its whole history would have sent (bytes as BIGINT: a long conversation's history passes
    # PostgreSQL's INTEGER). NULL in the rows written before.
    """
    ALTER TABLE usage ADD COLUMN conversation TEXT;
    ALTER TABLE usage ADD COLUMN turn_id TEXT;
    ALTER TABLE usage ADD COLUMN transport TEXT;
    ALTER TABLE usage ADD COLUMN client_bytes {bigint};
    ALTER TABLE usage ADD COLUMN client_items INTEGER;
    ALTER TABLE usage ADD COLUMN upstream_bytes {bigint};
    ALTER TABLE usage ADD COLUMN upstream_items INTEGER;
    ALTER TABLE usage ADD COLUMN recoveries INTEGER;
    ALTER TABLE usage ADD COLUMN recovery_kinds TEXT;
    ALTER TABLE usage ADD COLUMN recovery_bytes {bigint};
    ALTER TABLE usage ADD COLUMN unanchored_bytes {bigint};
    CREATE INDEX usage_conversation_ts ON usage (conversation, ts);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

TYPES: dict[str, dict[str, str]] = {
    "sqlite": {"blob": "BLOB", "real": "REAL", "bigint": "INTEGER", "serial_pk": "INTEGER PRIMARY KEY"},
    "postgres": {"blob": "BYTEA", "real": "DOUBLE PRECISION", "bigint": "BIGINT", "serial_pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"},
}


def render(migration: str, dialect: str) -> list[str]:
    """The migration's statements in `dialect`, one per item (no statement holds a semicolon of its own)."""
    text = migration.format(**TYPES[dialect])
    return [statement.strip() for statement in text.split(";") if statement.strip()]
