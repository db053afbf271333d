"""Keeping access tokens fresh: before they expire, and at once when upstream answers 401.

One refresh per account at a time (single flight), and none for a caller whose access token is no
longer the account's current one (a 401 that arrives after a refresh); the rotated refresh token is
stored before anything can use it; a refresh token upstream refuses for good takes the account out of
rotation as reauth_required, unless the account's refresh token changed meanwhile (someone else
rotated it): then the refusal only means our refresh lost the race, and the new tokens are adopted.
While the database is away a replica refreshes alone (`refresh_claim`); a refusal then may only mean that
another replica spent the token meanwhile, so the account stays in rotation, the refused token is never sent
again, and the next refresh made with the fleet's lease, finding no newer tokens stored, takes it out.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from typing import Any

import aiohttp

from codexlb import log
from codexlb.account import Account, Status, Tokens
from codexlb.admission.gate import Gate, GateFull
from codexlb.admission.gates import Gates
from codexlb.auth import jwt
from codexlb.auth.refresh_claim import ClaimError, RefreshClaims
from codexlb.config import Settings
from codexlb.pool.roster import Roster
from codexlb.singleflight import SingleFlight

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
# Answers that mean this refresh token will never work again.
PERMANENT = frozenset({
    "invalid_grant", "refresh_token_reused", "refresh_token_expired", "refresh_token_invalidated",
    "token_expired", "token_revoked",
})
_log = log.get("codexlb.refresh")


class RefreshError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def _error_code(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or "")
    return str(error or body.get("code") or "")


class Refresher:
    def __init__(self, roster: Roster, http: aiohttp.ClientSession, auth_base_url: str, *,
                 margin_s: float = 600.0, jitter_s: float = 120.0, timeout_s: float = 30.0,
                 gate: Gate | None = None) -> None:
        self._roster = roster
        self._http = http
        self._url = auth_base_url.rstrip("/") + "/oauth/token"
        self._margin_s = margin_s
        self._jitter_s = jitter_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._flights: SingleFlight[Tokens] = SingleFlight()
        # "ok", "failed", "refused" (for good), "adopted" (lost the race to another refresh): for /metrics
        self.results: Counter[str] = Counter()
        # Bounds refreshes at once across accounts (a pool coming back from sleep refreshes all together).
        self._gate = gate or Gates(Settings()).refreshes
        # Across the fleet: a refresh holds its account's lease for as long as it can take, queue and save included.
        self._claims = RefreshClaims(roster, hold_s=self._gate.wait_s + timeout_s + 10.0)
        # Account id -> its refresh token the token endpoint refused while this replica refreshed alone.
        self._refused_alone: dict[str, str] = {}

    def due(self, account: Account, now: float) -> bool:
        """Refresh ahead of expiry; a stable per-account jitter keeps a pool from refreshing in one burst."""
        if account.status in (Status.PAUSED, Status.REAUTH_REQUIRED, Status.DEACTIVATED):
            return False
        jitter = (zlib.crc32(account.id.encode()) % 1000) / 1000 * self._jitter_s
        return account.tokens.access_expires_at - now <= self._margin_s + jitter

    async def refresh(self, account: Account, seen: str, reason: str) -> Tokens:
        """Fresh tokens for a caller that found the access token `seen` wanting (expiring, or refused with a
        401). When the account's access token is no longer `seen`, its tokens moved on since (another
        refresh): the current ones at once, no refresh. Else a refresh, joined with one already running."""
        if account.tokens.access_token != seen:
            return account.tokens
        return await self._flights.do(account.id, lambda: self._refresh(account, seen, reason))

    async def refresh_due(self, now: float | None = None) -> int:
        """One sweep of the proactive loop: refresh every account that is due; returns how many were."""
        now = time.time() if now is None else now
        due = [a for a in self._roster.all() if self.due(a, now)]
        results = await asyncio.gather(*(self.refresh(a, a.tokens.access_token, "expiring") for a in due),
                                       return_exceptions=True)
        for account, result in zip(due, results):
            if isinstance(result, RefreshError) and not result.permanent:
                _log.warning("token refresh failed; will retry", account=account.alias, error=str(result))
        return len(due)

    async def run(self, interval_s: float = 30.0) -> None:
        while True:
            await self.refresh_due()
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        await self._flights.close()

    async def _refresh(self, account: Account, seen: str, reason: str) -> Tokens:
        """One replica of the fleet refreshes at a time (`refresh_claim`); tokens another stored meanwhile are
        adopted, never refreshed again."""
        try:
            async with self._claims.claim(account) as claim:
                adopted = claim.adopted
                if adopted is None and account.tokens.access_token != seen:
                    adopted = account.tokens  # renewed here while the claim was made: nothing to spend
                if adopted is not None:
                    self.results["adopted"] += 1
                    return adopted
                if self._refused_alone.get(account.id) == account.tokens.refresh_token:
                    self._refused_before(account, claim.alone)
                return await self._call_token_endpoint(account, reason, claim.alone)
        except ClaimError as exc:
            self.results["failed"] += 1
            raise RefreshError(str(exc), permanent=False) from None

    def _refused_before(self, account: Account, alone: bool) -> None:
        """The refresh token was refused while alone: never sent again. Still alone, the database has not told
        whether another replica rotated it; with the lease, the stored tokens are no newer: gone for good."""
        if alone:
            self.results["failed"] += 1
            raise RefreshError("refresh token refused while the database is away; waiting for it", permanent=False)
        del self._refused_alone[account.id]
        self._roster.mark_reauth_required(account, "refresh refused")
        self.results["refused"] += 1
        raise RefreshError("refresh token refused", permanent=True)

    async def _call_token_endpoint(self, account: Account, reason: str, alone: bool) -> Tokens:
        used = account.tokens.refresh_token
        body = {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": used,
                "scope": "openid profile email"}
        try:
            async with self._gate.slot(), self._http.post(self._url, json=body, timeout=self._timeout) as resp:
                status = resp.status
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.results["failed"] += 1
            raise RefreshError(f"token endpoint unreachable: {type(exc).__name__}", permanent=False) from None
        except GateFull as exc:
            self.results["failed"] += 1
            raise RefreshError(exc.message, permanent=False) from None
        if status != 200 or not isinstance(data, dict):
            code = _error_code(data)
            permanent = status in (400, 401, 403) and code in PERMANENT
            if permanent and account.tokens.refresh_token != used:
                # Rotated meanwhile (another refresh, a new login): ours lost the race, the account is fine.
                self.results["adopted"] += 1
                _log.info("token refreshed elsewhere meanwhile; adopted", account=account.alias, reason=reason,
                          refused=code)
                return account.tokens
            if permanent and alone:
                # Maybe spent by another replica while the database is away: it will tell once it is back.
                self._refused_alone[account.id] = used
                self.results["failed"] += 1
                _log.warning("token refresh refused while the database is away; account kept until it is back",
                             account=account.alias, refused=code)
                raise RefreshError(f"token refresh answered {status} {code}".strip(), permanent=False)
            if permanent:
                self._roster.mark_reauth_required(account, f"refresh refused: {code}")
            self.results["refused" if permanent else "failed"] += 1
            raise RefreshError(f"token refresh answered {status} {code}".strip(), permanent=permanent)
        try:
            access = data["access_token"]
            tokens = Tokens(
                access_token=access,
                # A grant that does not rotate keeps the old refresh token valid.
                refresh_token=data.get("refresh_token") or used,
                id_token=data.get("id_token") or account.tokens.id_token,
                access_expires_at=jwt.expiry(access),
                last_refresh=time.time(),
            )
        except (KeyError, TypeError, jwt.JWTError) as exc:
            raise RefreshError(f"token endpoint answered an unusable body ({exc})", permanent=False) from None
        await self._roster.set_tokens(account, tokens)
        self.results["ok"] += 1
        _log.info("token refreshed", account=account.alias, reason=reason,
                  expires_in_s=int(tokens.access_expires_at - time.time()))
        return tokens
