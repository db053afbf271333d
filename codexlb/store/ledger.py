"""The ledger read back: per conversation (its summary, its requests), and totals per API key and per account,
from the usage rows (written by `codexlb.accounting`, pruned with the request log). Functions over an Engine, one
SQL for both engines.

A request's saved bytes are what a client resending its whole history would have sent (`unanchored_bytes`) less
what went upstream for it (`upstream_bytes`, recoveries included), never below 0: on a client WebSocket, the history
its anchor stood for; over the HTTP bridge, the history the client sent and the bridge did not; on the plain HTTP
way, nothing. A request that sent nothing upstream (refused) and rows written before the ledger save nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

from codexlb.store.engine import Engine

_SAVED = ("CASE WHEN upstream_bytes > 0 AND unanchored_bytes > upstream_bytes THEN unanchored_bytes - upstream_bytes "
          "ELSE 0 END")
# The figures summed per group, as (name in the answer, SQL).
_TOTALS = (
    ("requests", "COUNT(*)"),
    ("input_tokens", "SUM(input_tokens)"), ("cached_tokens", "SUM(cached_tokens)"),
    ("output_tokens", "SUM(output_tokens)"), ("reasoning_tokens", "SUM(reasoning_tokens)"),
    ("client_bytes", "SUM(client_bytes)"), ("upstream_bytes", "SUM(upstream_bytes)"),
    ("unanchored_bytes", "SUM(unanchored_bytes)"), ("saved_bytes", f"SUM({_SAVED})"),
    ("recoveries", "SUM(recoveries)"), ("recovery_bytes", "SUM(recovery_bytes)"),
)
_SUMS = ", ".join(f"{sql} AS {name}" for name, sql in _TOTALS)
# A conversation's summary. Its account is the one its latest request went to (a conversation can move).
_SUMMARY = (
    "SELECT s.*, k.name, a.alias FROM (SELECT conversation, MAX(api_key_id) AS api_key_id, "
    "(SELECT l.account_id FROM usage l WHERE l.conversation = u.conversation AND l.account_id IS NOT NULL "
    "ORDER BY l.ts DESC LIMIT 1) AS account_id, MIN(ts) AS first_seen, MAX(ts) AS last_seen, "
    f"COUNT(DISTINCT turn_id) AS turns, {_SUMS} FROM usage u WHERE {{where}} GROUP BY conversation) s "
    "LEFT JOIN api_keys k ON k.id = s.api_key_id LEFT JOIN accounts a ON a.id = s.account_id "
    "ORDER BY s.last_seen DESC, s.conversation LIMIT ?"
)
_SUMMARY_FIELDS = ("conversation", "api_key_id", "account_id", "first_seen", "last_seen", "turns",
                   *(name for name, _ in _TOTALS), "api_key_name", "account_alias")
REQUEST_FIELDS = ("id", "ts", "turn_id", "transport", "status", "error_code", "model", "account_id", "input_tokens",
                  "cached_tokens", "output_tokens", "reasoning_tokens", "client_bytes", "client_items",
                  "upstream_bytes", "upstream_items", "recoveries", "recovery_kinds", "recovery_bytes",
                  "unanchored_bytes")
_REQUESTS = f"SELECT {', '.join(REQUEST_FIELDS)} FROM usage WHERE conversation = ? ORDER BY id LIMIT ?"
# Totals per API key or per account: (group column, the table naming it, its name column, answer's names).
_BY = {"key": ("api_key_id", "api_keys", "name", "api_key_id", "api_key_name"),
       "account": ("account_id", "accounts", "alias", "account_id", "account_alias")}
MAX_REQUESTS = 10_000  # one conversation's requests in one answer


def _number(value: Any) -> int:
    return int(value or 0)  # SUM over no row is NULL; PostgreSQL sums BIGINTs as NUMERIC


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _summary(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_SUMMARY_FIELDS, row))
    for name in ("turns", *(name for name, _ in _TOTALS)):
        out[name] = _number(out[name])
    return out


async def conversations(db: Engine, since: float, until: float, *, key_ids: Sequence[str] | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
    """Summaries of the conversations with requests in [since, until), last seen first; `key_ids`: of those keys."""
    where = ["conversation IS NOT NULL", "ts >= ?", "ts < ?"]
    params: list[Any] = [since, until]
    if key_ids is not None:
        where.append(f"api_key_id IN ({_marks(len(key_ids))})" if key_ids else "1 = 0")
        params.extend(key_ids)
    rows = await db.fetch(_SUMMARY.format(where=" AND ".join(where)), (*params, limit))
    return [_summary(row) for row in rows]


async def conversation(db: Engine, conversation: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One conversation's summary and its requests (oldest first, at most MAX_REQUESTS), or None if it has none."""
    rows = await db.fetch(_SUMMARY.format(where="conversation = ?"), (conversation, 1))
    if not rows:
        return None
    requests = []
    for row in await db.fetch(_REQUESTS, (conversation, MAX_REQUESTS)):
        request = dict(zip(REQUEST_FIELDS, row))
        request["saved_bytes"] = saved(request["unanchored_bytes"], request["upstream_bytes"])
        requests.append(request)
    return _summary(rows[0]), requests


def saved(unanchored_bytes: int | None, upstream_bytes: int | None) -> int:
    if unanchored_bytes is None or not upstream_bytes:
        return 0
    return max(0, unanchored_bytes - upstream_bytes)


async def totals(db: Engine, by: str, since: float, until: float) -> list[dict[str, Any]]:
    """Totals per API key (`by="key"`) or per account over [since, until), the most requests first."""
    column, table, name, id_field, name_field = _BY[by]
    names = [n for n, _ in _TOTALS if n not in ("client_bytes", "upstream_bytes", "unanchored_bytes")]
    sums = ", ".join(f"{sql} AS {n}" for n, sql in _TOTALS if n in names)
    rows = await db.fetch(
        f"SELECT t.*, n.{name} FROM (SELECT {column} AS who, {sums} FROM usage WHERE ts >= ? AND ts < ? "
        f"GROUP BY {column}) t LEFT JOIN {table} n ON n.id = t.who ORDER BY t.requests DESC, t.who", (since, until))
    return [{id_field: row[0], name_field: row[-1], **{n: _number(v) for n, v in zip(names, row[1:-1])}}
            for row in rows]


async def usage(db: Engine, since: float, until: float) -> dict[str, Any]:
    """`GET /api/usage`'s answer: totals per API key and per account over [since, until)."""
    return {"since": since, "until": until, "keys": await totals(db, "key", since, until),
            "accounts": await totals(db, "account", since, until)}


async def key_ids(db: Engine, ref: str) -> list[str]:
    """The ids of the API key with this id, else of those with this name (revoked keys included)."""
    rows = await db.fetch("SELECT id, name FROM api_keys WHERE id = ? OR name = ?", (ref, ref))
    return [i for i, _ in rows if i == ref] or [i for i, _ in rows]
