"""Who may use the admin API (and later the dashboard): the operator, proved one of three ways.

| Caller | No admin password set | Admin password set |
|---|---|---|
| this machine, with the local admin token (`<data-dir>/admin.token`, the CLI) | yes | yes |
| this machine, nothing else | yes | no: 401 `admin_login_required` |
| another machine, or any caller through a reverse proxy (`Forwarded`, `X-Forwarded-For`, ...) | no: 403 `admin_forbidden` | with a session from `POST /api/login` |

A session is a random cookie (HttpOnly, SameSite=Strict, Secure over TLS), good for `SESSION_TTL_S`,
kept in memory and (as a digest) in the database, so that every replica knows it. Against cross-site request forgery: a state-changing call (POST, PUT, PATCH, DELETE)
that a browser marks as coming from another site (`Origin`, `Sec-Fetch-Site`) is refused, and one
made with a session cookie must also carry the session's `X-CSRF-Token`, which another site can
neither read nor send. Logins are rate-limited per client (`codexlb.trusted_proxies` says who that is),
checks in progress counting as failures, and few checks run at once (`CHECKS_AT_ONCE`). The password is
kept as a scrypt hash in the database (`codexlb admin set-password`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from codexlb.errors import APIError
from codexlb.loopback import forwarded, is_local_request
from codexlb.trusted_proxies import client_address

T = TypeVar("T")
SESSION_COOKIE = "codexlb_session"
CSRF_HEADER = "X-CSRF-Token"
TOKEN_FILE = "admin.token"
SESSION_TTL_S = 12 * 3600.0
# Failed logins allowed per address in LOGIN_WINDOW_S before the next must wait.
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 60.0
# Addresses with failures remembered; past it, those whose failures are all older than the window go.
TRACKED_ADDRESSES = 10_000
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# scrypt cost: about 50 ms and 16 MiB per check on a small machine, off the event loop.
_N, _R, _P = 2**14, 8, 1
# Password checks run on threads of their own (the loop's default executor also resolves upstream's name),
# this many at once, and at most CHECKS_AT_ONCE are admitted: past them a login gets 429 at once. However
# many logins come, the proxy keeps the rest of the CPU.
CHECK_THREADS = 1
CHECKS_AT_ONCE = 4


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def same_secret(presented: str, expected: str) -> bool:
    """A secret a client sent (any text a header holds) against ours, in constant time. Compared as bytes:
    hmac.compare_digest refuses a str with a non-ASCII character, and that refusal was a 500."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


@dataclass(slots=True)
class Session:
    csrf: str
    expires_at: float


def session_digest(cookie: str) -> bytes:
    """What identifies a session where it is kept (memory, the database): never the cookie itself."""
    return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).digest()


class AdminAuth:
    def __init__(self, password_hash: str | None, local_token: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.password_hash = password_hash
        self.local_token = local_token
        self._sessions: dict[bytes, Session] = {}  # by session_digest(cookie)
        self._failures: dict[str, deque[float]] = {}
        # Logins being checked, per client: each counts as a failure until it ends, so that concurrent
        # guesses cannot all be checked before the first failure is counted.
        self._checking: dict[str, int] = {}
        self._clock = clock
        self._checks = ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="codexlb-password")

    @classmethod
    def local(cls, data_dir: Path, password_hash: str | None) -> "AdminAuth":
        """With a fresh local token, written for this machine's CLI (owner-only file)."""
        token = secrets.token_urlsafe(32)
        path = data_dir / TOKEN_FILE
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        path.write_text(token)
        return cls(password_hash, token)

    def check(self, request: web.Request) -> None:
        """Raise the APIError a caller who is not the operator gets (see the module table)."""
        local = is_local_request(request.remote, request.headers)
        if local and same_secret(request.headers.get("Authorization", ""), f"Bearer {self.local_token}"):
            return  # the CLI: a browser cannot send a token it cannot read, so no CSRF check
        changing = request.method in _STATE_CHANGING
        if changing and _cross_site(request):
            raise APIError(403, "Cross-site admin calls are refused.", code="csrf_failed")
        session = self._session(request)
        if session is not None:
            if changing and not same_secret(request.headers.get(CSRF_HEADER, ""), session.csrf):
                raise APIError(403, "Missing or wrong X-CSRF-Token for this session.", code="csrf_failed")
            return
        if self.password_hash is not None:
            raise APIError(401, "Log in first: POST /api/login with the admin password.", code="admin_login_required")
        if not local:
            via = forwarded(request.headers)
            raise APIError(403, "The admin API answers this machine only until an admin password is set "
                           "(`codexlb admin set-password`)" + (f"; this request came through a proxy ({via})"
                                                                 if via else "") + ".", code="admin_forbidden")

    async def login(self, request: web.Request, password: str) -> tuple[str, str]:
        """A new session's cookie and CSRF token; raises 401, or 429 when the client failed too often or
        too many checks are running."""
        remote = client_address(request)
        now = self._clock()
        failures = self._failures.setdefault(remote, deque())
        while failures and now - failures[0] > LOGIN_WINDOW_S:
            failures.popleft()
        checking = self._checking.get(remote, 0)
        if len(failures) + checking >= LOGIN_FAILURES:
            wait = max(1, int(LOGIN_WINDOW_S - (now - failures[0])) + 1) if failures else 1
            raise APIError(429, f"Too many failed logins; retry in {wait} s.", code="login_rate_limited",
                           type="rate_limit_error", headers={"Retry-After": str(wait)})
        if sum(self._checking.values()) >= CHECKS_AT_ONCE:
            raise APIError(429, "Too many logins are being checked at once; retry in 1 s.",
                           code="login_rate_limited", type="rate_limit_error", headers={"Retry-After": "1"})
        stored = self.password_hash
        self._checking[remote] = checking + 1
        try:
            ok = stored is not None and await self._off_loop(verify_password, password, stored)
        finally:
            if self._checking[remote] == 1:
                del self._checking[remote]
            else:
                self._checking[remote] -= 1
        if not ok:
            # Looked up again: while the check ran, a tidy-up may have dropped this address's entry.
            self._failures.setdefault(remote, deque()).append(now)
            if len(self._failures) > TRACKED_ADDRESSES:
                self._forget_failures_before(now - LOGIN_WINDOW_S)
            raise APIError(401, "Wrong admin password." if stored else "No admin password is set; run "
                           "`codexlb admin set-password` on the server.", code="invalid_password")
        self._failures.pop(remote, None)
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._drop_expired()
        self._sessions[session_digest(cookie)] = Session(csrf, time.time() + SESSION_TTL_S)
        return cookie, csrf

    async def hash(self, password: str) -> str:
        """`hash_password` on the password threads (the operator's, so no gate)."""
        return await self._off_loop(hash_password, password)

    def close(self) -> None:
        self._checks.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._checks, fn, *args)

    def csrf_for(self, request: web.Request) -> str | None:
        """The CSRF token of the caller's session (a page that reloaded asks for it again)."""
        session = self._session(request)
        return session.csrf if session is not None else None

    def session(self, cookie: str) -> Session | None:
        return self._sessions.get(session_digest(cookie))

    def logout(self, request: web.Request) -> bytes:
        """Ends the caller's session here; its digest, to end it everywhere."""
        digest = session_digest(request.cookies.get(SESSION_COOKIE, ""))
        self._sessions.pop(digest, None)
        return digest

    def adopt(self, digest: bytes, session: Session) -> None:
        self._sessions[digest] = session

    def set_sessions(self, sessions: dict[bytes, Session]) -> None:
        """The sessions as stored (shared by every replica; a login on one is good on all)."""
        self._sessions = sessions

    def set_password(self, password_hash: str) -> None:
        """A new password ends every session made with the old one."""
        self.password_hash = password_hash
        self._sessions.clear()

    def _session(self, request: web.Request) -> Session | None:
        session = self._sessions.get(session_digest(request.cookies.get(SESSION_COOKIE, "")))
        if session is None or session.expires_at < time.time():
            return None
        return session

    def _forget_failures_before(self, cutoff: float) -> None:
        """Addresses whose last failure is older than `cutoff` are no longer held back: forget them."""
        for address in [a for a, failures in self._failures.items() if not failures or failures[-1] < cutoff]:
            del self._failures[address]

    def _drop_expired(self) -> None:
        now = time.time()
        for cookie in [c for c, s in self._sessions.items() if s.expires_at < now]:
            del self._sessions[cookie]


def _cross_site(request: web.Request) -> bool:
    """What a browser says of where the call comes from; other clients say nothing and are not browsers.

    `Sec-Fetch-Site` is the browser's own word, which no page can set: when it is there it decides. Only an
    older browser's `Origin` is compared with the Host, which a reverse proxy may have rewritten."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


def over_tls(request: web.Request) -> bool:
    """Whether the browser's connection is encrypted: here, or up to a reverse proxy that ended TLS and says
    so. (A client lying about it only gets a Secure cookie, which then stays off plain HTTP.)"""
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" or "proto=https" in request.headers.get("Forwarded", "").lower()
