"""What the store asks of a database engine; `store/sqlite` and `store/postgres` are the two that answer.

Statements are written once, with `?` placeholders; an engine adapts them to its driver. Writes are
ordered: a write (queued with `submit` or awaited with `execute`) never lands before one issued earlier, and
a read sees every write issued before it.

A `quick` call gives up as soon as the server is found unreachable (DatabaseUnreachable) instead of waiting
out the engine's bound: for callers that can go on without the database (a token refresh while it is away).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol, Sequence

Params = Sequence[Any]
Statement = tuple[str, Params]
# What another replica changed: (kind, ref), e.g. ("account", "<id>"), ("keys", ""), ("admin", "").
Change = tuple[str, str]
OnChanges = Callable[[list[Change]], Awaitable[None]]
OnResync = Callable[[], Awaitable[None]]


class DatabaseError(Exception):
    """The database cannot be used; the message is for the operator."""


class DatabaseUnavailable(DatabaseError):
    """The database did not answer within its bound (it is down or unreachable); a retry may succeed."""


class DatabaseUnreachable(DatabaseUnavailable):
    """A `quick` call found the server unreachable (a connection of its own failed, not a slow answer). A write
    so refused stays queued, in order, and lands once the server is back."""


class Engine(Protocol):
    dialect: str  # "sqlite" or "postgres": picks the schema's types and the few statements that differ
    where: str    # the database, for messages (a path, or the URL without credentials)

    async def fetch(self, sql: str, params: Params = (), *, quick: bool = False) -> list[tuple[Any, ...]]: ...

    async def execute(self, sql: str, params: Params = (), *, quick: bool = False) -> int:
        """Run one write and wait for it; returns the rows it touched."""
        ...

    async def transaction(self, statements: Sequence[Statement], *, quick: bool = False) -> list[int]:
        """Run the writes in one transaction and wait; returns the rows each touched."""
        ...

    async def write_returning(self, sql: str, params: Params, also: Sequence[Statement]) -> list[tuple[Any, ...]]:
        """Run one write with a RETURNING clause and `also` in one transaction, and wait; returns its rows."""
        ...

    def submit(self, sql: str, params: Params = ()) -> None:
        """Queue a write without waiting; a failure is logged, since nobody awaits it."""
        ...

    def submit_all(self, statements: Sequence[Statement]) -> None:
        """Queue writes to run in one transaction, without waiting."""
        ...

    def submit_many(self, sql: str, rows: Sequence[Params]) -> None:
        """Queue one statement over many rows, in one transaction."""
        ...

    async def barrier(self) -> None:
        """Wait until every write queued before this call has landed (or failed)."""
        ...

    def change(self, origin: str, kind: str, ref: str) -> Statement:
        """The statement that tells the other replicas of a change: put it in the same transaction as the
        change, so that they hear of it once it is committed, and only then."""
        ...

    async def follow(self, origin: str, on_changes: OnChanges, on_resync: OnResync) -> None:
        """Forever: hand the other replicas' changes to `on_changes`, in the order they were committed, and
        call `on_resync` when some may have been missed (once it follows, and after a lost connection)."""
        ...

    async def close(self) -> None:
        """Land the queued writes, then close."""
        ...
