"""The process's gates, sized from the settings: proxied requests in flight, upstream WebSocket
connects, token refreshes, streams per account, and requests per API key that has a limit; resized in place
when the settings are reloaded."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from codexlb.account import Account
from codexlb.admission.gate import Gate
from codexlb.config import Settings
from codexlb.store.api_keys import KeyRecord


class _AccountGate(Gate):
    """An account's streams gate whose count is the account's own `inflight`, which strategies read:
    one number, so the two can never disagree."""

    def __init__(self, account: Account, capacity: int, **kw: Any) -> None:
        self.account = account
        super().__init__("account", capacity, **kw)

    # The alias can change (a re-import renames): read it at the time of asking.
    @property
    def name(self) -> str:
        return f"account:{self.account.alias}"

    @property
    def label(self) -> str:
        return f"streams on account {self.account.alias}"

    @property  # type: ignore[override]
    def in_use(self) -> int:
        return self.account.inflight

    @in_use.setter
    def in_use(self, value: int) -> None:
        self.account.inflight = value


class Gates:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.inflight = self._gate("inflight", settings.max_inflight, "proxied requests in flight")
        self.upstream_connects = self._gate("upstream_connects", settings.max_upstream_connects,
                                            "upstream WebSocket connects")
        self.refreshes = self._gate("refreshes", settings.max_refreshes, "token refreshes")
        # Requests that found every usable account full line up here for whichever frees first.
        self.any_account = self._gate("any_account", 1, "line for a stream slot on any account")
        self.account_freed = asyncio.Event()
        self._accounts: dict[str, _AccountGate] = {}
        self._keys: dict[str, Gate] = {}

    def _gate(self, name: str, capacity: int, label: str, code: str = "proxy_overloaded") -> Gate:
        return Gate(name, capacity, wait_s=self._settings.queue_wait_s, max_queue=self._settings.max_queue,
                    code=code, label=label)

    def account(self, account: Account) -> Gate:
        """The streams gate of one account (made on first use)."""
        gate = self._accounts.get(account.id)
        if gate is None or gate.account is not account:
            gate = self._accounts[account.id] = _AccountGate(
                account, self._settings.account_max_streams, wait_s=self._settings.queue_wait_s,
                max_queue=self._settings.max_queue)
            gate.on_free = self.account_freed.set
        return gate

    def resize(self, settings: Settings) -> None:
        """Apply reloaded settings to every gate in place (`Gate.resize`): no held slot is taken back."""
        self._settings = settings
        bounds = {"wait_s": settings.queue_wait_s, "max_queue": settings.max_queue}
        self.inflight.resize(settings.max_inflight, **bounds)
        self.upstream_connects.resize(settings.max_upstream_connects, **bounds)
        self.refreshes.resize(settings.max_refreshes, **bounds)
        self.any_account.resize(1, **bounds)
        for gate in self._accounts.values():
            gate.resize(settings.account_max_streams, **bounds)
        for gate in self._keys.values():
            gate.resize(gate.capacity, **bounds)  # a key's own limit is the key's, not a setting

    def forget_account(self, account_id: str) -> None:
        """A removed account's gate leaves the listing; slots still held release into the old gate."""
        self._accounts.pop(account_id, None)

    def key(self, key_id: str, name: str, limit: int) -> Gate:
        """The concurrency gate of an API key with a limit (made on first use, resized when the key's changed)."""
        gate = self._keys.get(key_id)
        if gate is None:
            gate = self._keys[key_id] = self._gate(f"key:{name}", limit, f"API key {name}'s concurrency limit",
                                                   code="concurrency_limit_exceeded")
        elif gate.capacity != limit:
            gate.resize(limit)
        return gate

    @asynccontextmanager
    async def admitted(self, key: KeyRecord | None) -> AsyncIterator[None]:
        """A proxied request's slots, its key's first (a busy key waits without holding a global slot)."""
        if key is None or key.max_concurrency is None:
            async with self.inflight.slot():
                yield
            return
        async with self.key(key.id, key.name, key.max_concurrency).slot(), self.inflight.slot():
            yield

    def all(self) -> list[Gate]:
        return [self.inflight, self.upstream_connects, self.refreshes, self.any_account, *self._accounts.values(),
                *self._keys.values()]

    def snapshot(self) -> dict[str, Any]:
        return {"gates": {gate.name: gate.snapshot() for gate in self.all()}}
