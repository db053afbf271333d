"""The simulated backend's decisions, shared by its HTTP and WebSocket transports.

`Backend.begin` takes one validated Responses request on an authenticated
account and either raises the error upstream would answer, or returns a `Turn`
whose events the transport plays out (faults included).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import orjson
from aiohttp import web

from codexlb.sim import responses
from codexlb.sim.accounts import SimAccount, make_accounts
from codexlb.sim.errors import SimError, bad_request, previous_response_not_found
from codexlb.sim.faults import HANDSHAKE, FaultBook, Plan, RequestInfo
from codexlb.sim.oauth import AuthServer
from codexlb.sim.state import StateStore

DEFAULT_MODELS = ("gpt-5.5", "gpt-5.4", "gpt-5.2-codex", "gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-5.1", "gpt-5")
# Real base instructions run to about 18 KB; clients that adopt ours send requests of a realistic size.
BASE_INSTRUCTIONS = "You are a coding agent answering through the codexlb simulator.\n" + "".join(
    f"Guideline {i}: read the task, inspect the workspace, make the smallest correct change, and report it.\n"
    for i in range(1, 200)
)
# A stalled stream still ends some day, so a forgotten fault cannot pin a task forever.
STALL_LIMIT_S = 3600.0
# A held answer (`expire` with `hold_stale`) goes out after this at the latest, renewed or not.
HOLD_LIMIT_S = 60.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    accounts: int = 3
    token_ttl_s: float = 86400.0
    state_ttl_s: float = 900.0
    primary_limit_tokens: int = 5_000_000
    secondary_limit_tokens: int = 50_000_000
    reply_words: int = 0
    seed: int = 0
    models: tuple[str, ...] = DEFAULT_MODELS
    # The device-code poll interval the sim tells clients; the Codex CLI reads whole seconds only.
    device_poll_interval_s: float = 1.0
    # How many request records are kept (the newest): a test under heavy load that reads back one
    # conversation's requests keeps more.
    records: int = 10_000


@dataclass(slots=True)
class Record:
    """One Responses request as the sim saw it: what tests read to measure context growth."""

    seq: int
    account_id: str
    transport: str
    turn_state: str
    kind: str
    previous_response_id: str | None
    n_input: int
    input_bytes: int
    generate: bool
    response_id: str | None = None
    outcome: str = "pending"
    status: int = 200
    error_code: str | None = None
    faults: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    # The request's whole input (stored context + its items) against its conversation's last answered
    # one (by prompt_cache_key): "new", "extends" (it went on from there) or "diverged" (items lost or changed).
    continuity: str = "new"
    # What arrived, so tests can see which headers crossed a proxy.
    headers: dict[str, str] = field(default_factory=dict)
    # The client's address and port: requests that share it came over one connection.
    peer: str = ""
    # The whole request as it arrived: the HTTP body's bytes, or the WebSocket frame's text length.
    body_bytes: int = 0


class Sink:
    """Where a transport puts a turn's events."""

    async def send(self, events: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def close(self, code: int | None) -> None:
        """Drop the connection: a WebSocket close frame with `code`, else a TCP abort."""
        raise NotImplementedError


@dataclass(slots=True)
class Turn:
    answer: responses.Answer
    plan: Plan
    record: Record
    commit: Callable[[], None]

    async def play(self, sink: Sink) -> None:
        plan, events = self.plan, self.answer.events
        action = plan.action
        disrupt_at = None
        if action is not None and action.action in ("failed", "close", "end_without_terminal", "stall"):
            # Never past the last event: the terminal is what a disruption replaces.
            disrupt_at = min(action.after_events, len(events) - 1)
        if plan.first_byte_s:
            await asyncio.sleep(plan.first_byte_s)
        before = events if disrupt_at is None else events[:disrupt_at]
        if plan.between_events_s:
            # Paced on a schedule, not by a sleep after each write: a busy sim must not drift later with
            # every event, or a benchmark reads its own lag as the proxy's.
            loop = asyncio.get_running_loop()
            started = loop.time()
            for index, event in enumerate(before):
                if index:
                    await asyncio.sleep(started + index * plan.between_events_s - loop.time())
                await sink.send([event])
        elif before:
            # One write for the whole stream: the sim must never be a benchmark's bottleneck.
            await sink.send(before)
        if disrupt_at is not None:
            await self._disrupt(sink, disrupt_at)
            return
        self.commit()
        if action is not None and action.action == "close_after_response":
            await sink.close(action.close_code)

    async def _disrupt(self, sink: Sink, index: int) -> None:
        action = self.plan.action
        assert action is not None
        self.record.outcome = action.action
        if action.action == "failed":
            code = action.code or "server_error"
            message = action.message or "An error occurred while processing your request."
            self.record.error_code = code
            await sink.send([responses.failed_event(self.answer, index, code, message)])
        elif action.action == "close":
            await sink.close(action.close_code)
        elif action.action == "stall":
            await asyncio.sleep(STALL_LIMIT_S)


class Backend:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.accounts: list[SimAccount] = make_accounts(
            self.config.accounts,
            token_ttl_s=self.config.token_ttl_s,
            primary_limit_tokens=self.config.primary_limit_tokens,
            secondary_limit_tokens=self.config.secondary_limit_tokens,
        )
        self.models = frozenset(self.config.models)
        self.state = StateStore(self.config.state_ttl_s)
        self.faults = FaultBook(self.config.seed)
        self.records: deque[Record] = deque(maxlen=self.config.records)
        self.catalog_requests = 0  # GET /codex/models answered
        self.usage_polls: Counter[str] = Counter()  # GET /wham/usage answered, per account id
        # Responses WebSockets open right now: a client that leaves sockets behind shows here.
        self.sockets: set[Any] = set()
        self.auth = AuthServer(self.accounts, self.account, device_poll_interval_s=self.config.device_poll_interval_s)
        self._seq = 0
        # Per (account, prompt_cache_key): the last full input, to count cached prefix tokens.
        self._prefix: dict[tuple[str, str], tuple[list[Any], list[int]]] = {}
        # Per prompt_cache_key, any account: the last answered whole input + output, to check continuity.
        self._histories: dict[str, list[Any]] = {}

    @property
    def open_sockets(self) -> int:
        return len(self.sockets)

    # --- accounts ---------------------------------------------------------------------------

    def account(self, key: str) -> SimAccount | None:
        """By account id, or by 1-based number."""
        for account in self.accounts:
            if account.account_id == key or str(account.index + 1) == key:
                return account
        return None

    async def authenticate(self, headers: Mapping[str, str]) -> SimAccount:
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        now = time.time()
        for account in self.accounts:
            expires = account.valid_access.get(token)
            if expires is None:
                continue
            if account.revoked:
                break
            if expires <= now:
                # The first 401 goes out at once: it is what makes the client refresh.
                if account.first_401_sent:
                    await self._held(account)
                account.first_401_sent = True
                raise SimError(401, "Provided authentication token is expired. Please try signing in again.",
                               code="token_expired")
            claimed = headers.get("chatgpt-account-id")
            if claimed is not None and claimed != account.account_id:
                raise SimError(403, "The account id does not match the access token.", code="account_mismatch")
            if account.renewed is not None and token == account.access_token:
                account.renewed.set()
                account.renewed = None
            return account
        raise SimError(401, "Your authentication token has been invalidated. Please try signing in again.",
                       code="token_invalidated")

    @staticmethod
    async def _held(account: SimAccount) -> None:
        """Hold an answer to stale credentials while `expire` asked for it (`hold_stale`), until a newer access
        token of the account has been used."""
        renewed = account.renewed
        if renewed is None:
            return
        account.held += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_LIMIT_S):
                await renewed.wait()

    def refresh(self, refresh_token: str) -> SimAccount:
        """The refresh_token grant: rotate, and refuse a token that was already used."""
        for account in self.accounts:
            if refresh_token == account.refresh_token and not account.revoked:
                account.issue_tokens()
                account.refreshes += 1
                return account
            if refresh_token in account.used_refresh:
                account.reused += 1
                raise SimError(401, "Your refresh token has already been used to generate a new access token. "
                               "Please try signing in again.", code="refresh_token_reused")
        raise SimError(401, "Your refresh token is invalid or has been revoked.", code="refresh_token_invalidated")

    async def redeem(self, refresh_token: str) -> SimAccount:
        """The token endpoint's refresh_token grant: `refresh`, with the refusal of a reused token held while
        `expire` asked for it (`hold_stale`): it then comes after the winner's new token was used."""
        try:
            return self.refresh(refresh_token)
        except SimError as exc:
            spent = next((a for a in self.accounts if refresh_token in a.used_refresh), None)
            if exc.code == "refresh_token_reused" and spent is not None:
                await self._held(spent)
            raise

    # --- responses --------------------------------------------------------------------------

    @staticmethod
    def new_turn_state() -> str:
        return f"ts_{secrets.token_hex(10)}"

    async def handshake(self, account: SimAccount) -> None:
        """Play the faults aimed at one WebSocket upgrade (kind `handshake`): a `delay` holds it for
        `first_byte_ms`; a `status` raises the SimError it is refused with."""
        plan = self.faults.plan(RequestInfo(account.account_id, "ws", False, HANDSHAKE, None))
        if plan.first_byte_s:
            await asyncio.sleep(plan.first_byte_s)
        action = plan.action
        if action is not None and action.action == "status":
            raise self._status_error(action.status, action.code, action.message, action.retry_after)

    def begin(self, payload: dict[str, Any], items: list[Any], account: SimAccount, *, transport: str,
              turn_state: str, metadata: Mapping[str, Any], headers: Mapping[str, str] | None = None,
              peer: str = "", body_bytes: int = 0) -> Turn:
        previous = payload.get("previous_response_id")
        generate = payload.get("generate", True) is not False
        kind = "prewarm" if not generate else str(metadata.get("request_kind") or "turn")
        sizes = [len(orjson.dumps(item)) for item in items]
        self._seq += 1
        record = Record(
            seq=self._seq, account_id=account.account_id, transport=transport, turn_state=turn_state, kind=kind,
            previous_response_id=previous, n_input=len(items), input_bytes=sum(sizes) + len(items) + 1,
            generate=generate, headers={k.lower(): v for k, v in (headers or {}).items()}, peer=peer,
            body_bytes=body_bytes,
        )
        self.records.append(record)
        plan = self.faults.plan(RequestInfo(account.account_id, transport, previous is not None, kind,
                                            metadata.get("turn_id")))
        record.faults = plan.fired
        try:
            return self._answer(payload, items, sizes, account, turn_state, plan, record)
        except SimError as exc:
            record.outcome, record.status, record.error_code = "error", exc.status, exc.code
            exc.split_s = plan.end_s
            raise

    def _answer(self, payload: dict[str, Any], items: list[Any], sizes: list[int], account: SimAccount,
                turn_state: str, plan: Plan, record: Record) -> Turn:
        now = time.time()
        if plan.drop_state:
            self.state.drop(account_id=account.account_id)
        action = plan.action
        if action is not None and action.action == "status":
            raise self._status_error(action.status, action.code, action.message, action.retry_after)
        window = account.limiting_window(now)
        if window is not None:
            raise SimError(429, "The usage limit has been reached", code="usage_limit_reached",
                           type="usage_limit_reached",
                           extra={"plan_type": account.plan, "resets_at": int(window.reset_at),
                                  "resets_in_seconds": max(0, int(window.reset_at - now))})
        for i, item in enumerate(items):
            blob = item.get("encrypted_content")
            if item.get("type") == "reasoning" and isinstance(blob, str):
                if responses.encrypted_owner(blob) != account.account_id:
                    raise bad_request("The encrypted content for item rs could not be verified.",
                                      "invalid_encrypted_content", f"input[{i}].encrypted_content")

        previous = record.previous_response_id
        tools_tokens = responses.tokens_for(len(orjson.dumps(payload.get("tools") or [])))
        new_tokens = responses.tokens_for(record.input_bytes)
        cache_key = str(payload.get("prompt_cache_key") or "")
        if previous is not None:
            stored = self.state.get(account.account_id, turn_state, previous)
            if stored is None:
                raise previous_response_not_found(previous)
            context = stored.items + items
            cached = stored.tokens
            context_tokens = stored.tokens + new_tokens
        else:
            context = list(items)
            cached = self._cached_prefix_tokens(account.account_id, cache_key, items, sizes, tools_tokens)
            context_tokens = new_tokens + tools_tokens

        answer = responses.build(payload, items, account_id=account.account_id, context_tokens=context_tokens,
                                 cached_tokens=cached, reply_words=self.config.reply_words)
        record.response_id = answer.response_id
        record.continuity = _continuity(self._histories.get(cache_key) if cache_key else None, context)

        def commit() -> None:
            record.outcome, record.usage = "completed", answer.usage
            self.state.put(account.account_id, turn_state, answer.response_id, context + answer.output,
                           answer.usage["total_tokens"])
            account.record_usage(answer.usage["total_tokens"] - answer.usage["input_tokens_details"]["cached_tokens"],
                                 time.time())
            if previous is None and cache_key:
                self._prefix[(account.account_id, cache_key)] = (items, sizes)
            if cache_key and record.generate:
                self._histories[cache_key] = context + answer.output

        return Turn(answer, plan, record, commit)

    def _cached_prefix_tokens(self, account_id: str, cache_key: str, items: list[Any], sizes: list[int],
                              tools_tokens: int) -> int:
        """Tokens a prompt cache would hold: the tools and the input prefix seen last time on this key."""
        last = self._prefix.get((account_id, cache_key)) if cache_key else None
        if last is None:
            return 0
        total = 0
        for old, new, size in zip(last[0], items, sizes):
            if old != new:
                break
            total += size
        return responses.tokens_for(total) + tools_tokens

    @staticmethod
    def _status_error(status: int, code: str | None, message: str | None, retry_after: float | None) -> SimError:
        defaults = {
            401: ("token_invalidated", "Your authentication token has been invalidated."),
            429: ("rate_limit_exceeded", "Rate limit reached. Please try again later."),
            500: ("server_error", "An error occurred while processing your request."),
            502: ("bad_gateway", "Bad gateway."),
            503: ("server_is_overloaded", "Our servers are currently overloaded. Please try again later."),
        }
        default_code, default_message = defaults.get(status, ("server_error", "Simulated failure."))
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return SimError(status, message or default_message, code=code or default_code, headers=headers)

    # --- views ------------------------------------------------------------------------------

    def records_view(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]

    def model_catalog(self) -> dict[str, Any]:
        """The catalog in the shape the Codex CLI parses (it needs every field below)."""
        levels = [{"effort": e, "description": f"{e.title()} reasoning effort"} for e in ("low", "medium", "high")]
        return {"models": [
            {"slug": slug, "display_name": slug.replace("gpt-", "GPT-"), "description": "Simulated model.",
             "default_reasoning_level": "medium", "supported_reasoning_levels": levels,
             "shell_type": "shell_command", "visibility": "list", "supported_in_api": True, "priority": rank,
             "context_window": 272000, "input_modalities": ["text", "image"], "support_verbosity": True,
             "default_verbosity": "low", "truncation_policy": {"mode": "tokens", "limit": 10000},
             "experimental_supported_tools": [], "base_instructions": BASE_INSTRUCTIONS}
            for rank, slug in enumerate(self.config.models)
        ]}


BACKEND = web.AppKey("sim_backend", Backend)


def turn_metadata(headers: Mapping[str, str], payload: Mapping[str, Any]) -> dict[str, Any]:
    """`x-codex-turn-metadata` of this request: the body's `client_metadata` copy first, since over
    WebSocket the header is the handshake's (a prewarm's) and not the current request's."""
    client_metadata = payload.get("client_metadata")
    raw = client_metadata.get("x-codex-turn-metadata") if isinstance(client_metadata, dict) else None
    if raw is None:
        raw = headers.get("x-codex-turn-metadata")
    if not isinstance(raw, str):
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _plain(item: Any) -> Any:
    """An item as its content: null fields are the same as absent ones (clients echo items with them)."""
    if isinstance(item, dict):
        return {k: _plain(v) for k, v in item.items() if v is not None}
    if isinstance(item, list):
        return [_plain(v) for v in item]
    return item


def _kept(items: list[Any]) -> list[Any]:
    """Reasoning sealed by an account is left out: a conversation that moves accounts must leave it behind."""
    return [_plain(i) for i in items
            if not (isinstance(i, dict) and i.get("type") == "reasoning" and i.get("encrypted_content"))]


def _continuity(last: list[Any] | None, context: list[Any]) -> str:
    if last is None:
        return "new"
    before, now = _kept(last), _kept(context)
    return "extends" if now[:len(before)] == before and len(now) > len(before) else "diverged"
