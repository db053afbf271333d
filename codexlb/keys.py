"""Client API keys: how one is made, how it is stored, and the in-memory ring every request is checked against.

A key is `sk-clb-` and 43 url-safe characters: 256 random bits. Only its SHA-256 digest and a short display
prefix are stored. A fast hash is right here, and a password KDF (bcrypt, scrypt, argon2) would only cost
time on every request: a KDF slows down guessing a low-entropy secret, but nobody can search 2^256 keys.

The ring holds the active keys by digest, loaded once at start-up; checking a key is one hash and one dict
lookup, with no database call. Create and revoke write through the store and then change the ring, so
they take effect on the next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from typing import Any, Mapping

from aiohttp import web

from codexlb import log
from codexlb.key_limits.policy import PolicyError, changes
from codexlb.store import Store
from codexlb.store.api_keys import KeyRecord

PREFIX = "sk-clb-"
KEY_LENGTH = len(PREFIX) + 43  # token_urlsafe(32) is 43 characters
DISPLAY_LENGTH = len(PREFIX) + 4
# last_used_at is for people reading `keys list`; a minute's precision spares the database a write per request.
TOUCH_INTERVAL_S = 60.0
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_log = log.get("codexlb.keys")
# The key a request came with (set by client auth; absent when no key is needed).
API_KEY = web.RequestKey("api_key", KeyRecord)


class KeyRingError(Exception):
    """An operator's request that cannot be done (unknown key, bad or taken name); one line."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_record(key: str, name: str, now: float) -> KeyRecord:
    return KeyRecord(id="key_" + secrets.token_hex(6), name=name, prefix=key[:DISPLAY_LENGTH], hash=digest(key),
                     created_at=now)


def _checked(fields: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    try:
        return changes(fields or {}, now)
    except PolicyError as exc:
        raise KeyRingError(str(exc)) from None


class KeyRing:
    def __init__(self, store: Store, active: list[KeyRecord]) -> None:
        self._store = store
        self._by_hash: dict[bytes, KeyRecord] = {r.hash: r for r in active}
        self._written_at: dict[str, float] = {}  # key id -> when last_used_at was last queued for the database
        self._lock = asyncio.Lock()  # create and revoke check names, then await the database

    @classmethod
    async def load(cls, store: Store) -> "KeyRing":
        return cls(store, await store.load_active_api_keys())

    @property
    def has_keys(self) -> bool:
        return bool(self._by_hash)

    def verify(self, presented: str) -> KeyRecord | None:
        """The active key `presented` is, or None. Cheap: the request path calls this every time."""
        if len(presented) != KEY_LENGTH or not presented.startswith(PREFIX) or not presented.isascii():
            return None
        wanted = digest(presented)
        record = self._by_hash.get(wanted)
        # The lookup compares digests, not keys, so its timing says nothing useful about any key;
        # compare_digest keeps the one comparison we write ourselves constant-time all the same.
        if record is None or not hmac.compare_digest(record.hash, wanted):
            return None
        now = time.time()
        record.last_used_at = now
        if now - self._written_at.get(record.id, 0.0) >= TOUCH_INTERVAL_S:
            self._written_at[record.id] = now
            self._store.touch_api_key_soon(record.id, now)
        return record

    async def list(self) -> list[KeyRecord]:
        """Every key, revoked ones too, with last use as this process knows it (fresher than the database)."""
        records = await self._store.list_api_keys()
        live = {r.id: r for r in self._by_hash.values()}
        for record in records:
            if record.id in live:
                record.last_used_at = live[record.id].last_used_at
        return records

    async def create(self, name: str | None = None, fields: Mapping[str, Any] | None = None) -> tuple[str, KeyRecord]:
        """A new key and its record, with `fields` (limits, models, expiry, note: `key_limits.policy`). The key
        exists only in the return value: show it once, then drop it."""
        if name is not None and not _NAME_OK.match(name):
            raise KeyRingError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        now = time.time()
        checked = _checked(fields, now)
        async with self._lock:
            records = await self._store.list_api_keys()
            if name is None:
                taken = {r.name for r in records}
                n = 1
                while f"key-{n}" in taken:
                    n += 1
                name = f"key-{n}"
            elif any(r.name == name and r.revoked_at is None for r in records):
                raise KeyRingError(f"an active key is already named {name!r}")
            key = generate()
            record = new_record(key, name, now)
            for field, value in checked.items():
                setattr(record, field, value)
            # Durable before usable: a key that worked must not vanish with a restart.
            await self._store.create_api_key(record)
            self._by_hash[record.hash] = record
        _log.info("api key created", key_id=record.id, name=record.name, **_logged(checked))
        return key, record

    async def update(self, ref: str, fields: Mapping[str, Any]) -> KeyRecord:
        """Change an active key's limits, models, expiry or note (by id or name); None clears one. Every field is
        checked before anything is written."""
        checked = _checked(fields, time.time())
        async with self._lock:
            record = self._find(await self._store.list_api_keys(), ref)
            if record.revoked_at is not None:
                raise KeyRingError(f"API key {record.name!r} ({record.id}) is revoked; create a new one")
            for field, value in checked.items():
                setattr(record, field, value)
            await self._store.update_api_key(record)
            live = self._by_hash.get(record.hash)
            if live is not None:  # the record requests hold: changed in place, so the next request sees it
                for field, value in checked.items():
                    setattr(live, field, value)
        _log.info("api key updated", key_id=record.id, name=record.name, **_logged(checked))
        return live if live is not None else record

    @staticmethod
    def _find(records: list[KeyRecord], ref: str) -> KeyRecord:
        """By id, else an active key's name, else a revoked key's."""
        matches = ([r for r in records if r.id == ref]
                   or [r for r in records if r.name == ref and r.revoked_at is None]
                   or [r for r in records if r.name == ref])
        if not matches:
            raise KeyRingError(f"no API key {ref!r} (see `codexlb keys list`)", not_found=True)
        return matches[0]

    async def revoke(self, ref: str) -> KeyRecord:
        """Revoke by id or name (an active key's name first)."""
        async with self._lock:
            record = self._find(await self._store.list_api_keys(), ref)
            if record.revoked_at is not None:
                raise KeyRingError(f"API key {record.name!r} ({record.id}) is already revoked")
            # Out of the ring before the write: a revoked key stops working even if the write fails.
            self._by_hash.pop(record.hash, None)
            self._written_at.pop(record.id, None)
            record.revoked_at = time.time()
            await self._store.revoke_api_key(record.id, record.revoked_at)
        _log.info("api key revoked", key_id=record.id, name=record.name)
        return record

    async def reload(self) -> None:
        """The active keys as stored: another replica created or revoked one. Last uses seen here are kept."""
        # Under the lock create and revoke hold across their write: a read between a revoke's two steps would
        # bring the key back.
        async with self._lock:
            records = await self._store.load_active_api_keys()
            live = {r.id: r for r in self._by_hash.values()}
            for record in records:
                if record.id in live:
                    record.last_used_at = live[record.id].last_used_at
            self._by_hash = {r.hash: r for r in records}

    def flush_last_used(self) -> None:
        """Queue the last uses not yet written (at shutdown, so `keys list` is right after a restart)."""
        for record in self._by_hash.values():
            if record.last_used_at is not None and record.last_used_at > self._written_at.get(record.id, 0.0):
                self._written_at[record.id] = record.last_used_at
                self._store.touch_api_key_soon(record.id, record.last_used_at)


def _logged(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What a log line may say of a key's settings: everything but the note, which is the operator's free text."""
    return {k: v for k, v in fields.items() if k != "note"}
