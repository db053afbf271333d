"""Account selection strategies: which usable account serves the next request.

Each strategy is a small object with one method, ``select(accounts, now)``. The caller hands it only candidates
that are usable now (``Account.usable(now)``) and that it has not already tried for this request; a strategy
never looks at status and does no I/O. It returns None only for an empty sequence.

Usage windows are read as of ``now``: a window whose ``reset_at`` has passed has reset upstream, so its stale
``used_percent`` counts as 0, and an unknown window (None) counts as 0 used too.

Pick a strategy by name with ``make_strategy``; ``codexlb.config.STRATEGIES`` lists the names.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from typing import Callable, Protocol, Sequence

from codexlb.account import Account, Window
from codexlb.config import STRATEGIES

DEFAULT_STRATEGY = "capacity"

# capacity: the extra weight (as a multiple) of capacity whose window is about to reset, and the floor under an
# account's remaining capacity so a full-but-still-usable account keeps a tiny, non-zero weight.
RESET_BONUS = 1.0
MIN_REMAINING = 0.01
WEIGHT_CEILING = 100.0 * (1.0 + RESET_BONUS)  # no account weighs more: full remaining, resetting now, idle
# capacity over large pools samples by rejection (see CapacityStrategy) before falling back to a full pass.
REJECTION_MIN_ACCOUNTS = 64
REJECTION_TRIES = 32


class Strategy(Protocol):
    name: str

    def select(self, accounts: Sequence[Account], now: float) -> Account | None: ...


def window_state(window: Window | None, now: float) -> tuple[float, float]:
    """``(used, left)`` of one window at ``now``.

    used: ``used_percent`` clamped to [0, 100]; 0 when the window is unknown, has already reset
    (``reset_at <= now``) or reports a non-number. left: the fraction of the window still to run before its reset,
    ``(reset_at - now) / (window_minutes * 60)`` clamped to [0, 1]; 1 (a whole window ahead) when unknown, already
    reset, or the window length is not positive.
    """
    if window is None or window.reset_at <= now:
        return 0.0, 1.0
    used = window.used_percent
    if not used > 0.0:  # also NaN
        used = 0.0
    elif used > 100.0:
        used = 100.0
    span = window.window_minutes * 60.0
    left = (window.reset_at - now) / span if span > 0.0 else 1.0
    if not left < 1.0:  # also NaN
        left = 1.0
    return used, left


def binding_state(account: Account, now: float) -> tuple[float, float]:
    """``(used, left)`` of the account's binding window: the more used of primary and secondary.

    On a tie the window with more of its span left binds (after the other resets, it still caps the account).
    """
    pu, pl = window_state(account.primary, now)
    su, sl = window_state(account.secondary, now)
    if su > pu or (su == pu and sl > pl):
        return su, sl
    return pu, pl


def used_percent(account: Account, now: float) -> float:
    """The account's binding used percent at ``now``: ``max(primary, secondary)``, each clamped to [0, 100], an
    unknown or already-reset window counting 0 (``binding_state(account, now)[0]``, without the tuples)."""
    used = 0.0
    w = account.primary
    if w is not None and w.reset_at > now:
        u = w.used_percent
        if u > 0.0:  # NaN and negatives count 0
            used = u if u < 100.0 else 100.0
    w = account.secondary
    if w is not None and w.reset_at > now:
        u = w.used_percent
        if u > used:
            used = u if u < 100.0 else 100.0
    return used


def capacity_weight(account: Account, now: float) -> float:
    """The ``capacity`` strategy's weight for one account (the reference for ``CapacityStrategy``'s fast loop).

        used, left = binding_state(account, now)        # see window_state / binding_state
        remaining  = max(100 - used, MIN_REMAINING)      # percent of the binding window still available
        urgency    = 1 + RESET_BONUS * (1 - left)        # 1 with a whole window ahead .. 2 just before the reset
        weight     = remaining * urgency / (1 + max(inflight, 0))
    """
    used, left = binding_state(account, now)
    remaining = 100.0 - used
    if remaining < MIN_REMAINING:
        remaining = MIN_REMAINING
    inflight = account.inflight if account.inflight > 0 else 0
    return remaining * (1.0 + RESET_BONUS * (1.0 - left)) / (1 + inflight)


class CapacityStrategy:
    """Weighted random choice, weight per account (see ``capacity_weight``)::

        used      = max(primary.used_percent, secondary.used_percent)   # unknown or already-reset window: 0
        binding   = the window giving `used` (tie: the one with more of its span left)
        left      = clamp((binding.reset_at - now) / (binding.window_minutes * 60), 0, 1)   # unknown: 1
        remaining = max(100 - used, 0.01)
        weight    = remaining * (1 + 1.0 * (1 - left)) / (1 + inflight)

    So: more remaining capacity draws proportionally more requests; capacity about to be reset (and otherwise wasted)
    counts up to double; every request already in flight on the account divides its weight (2 in flight: a third).

    Each account is chosen with probability ``weight / sum(weights)``, drawn from ``rng`` only, so the choice is a
    deterministic function of the input order, ``now`` and the state of ``rng``. How it is drawn:

    - fewer than ``REJECTION_MIN_ACCOUNTS`` candidates: one pass computing the cumulative weights, then
      ``rng.random() * total`` located by bisection;
    - more: rejection sampling first, O(1) expected whatever the pool size: pick a uniform candidate, accept it
      with probability ``weight / WEIGHT_CEILING`` (200, the largest possible weight); after ``REJECTION_TRIES``
      rejections (a pool of nearly full accounts), the exact pass above. Both paths draw from the same
      distribution, and so does the combination: given that a trial accepts, account i is its pick with
      probability ``w_i / sum(w)``, whichever trial it is.
    """

    name = "capacity"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def select(self, accounts: Sequence[Account], now: float) -> Account | None:
        n = len(accounts)
        if n == 0:
            return None
        if n == 1:
            return accounts[0]
        draw = self.rng.random
        if n >= REJECTION_MIN_ACCOUNTS:
            for _ in range(REJECTION_TRIES):
                index = int(draw() * n)
                if index < n:  # draw() < 1, but a product can round up to n for huge n
                    account = accounts[index]
                    if draw() * WEIGHT_CEILING < capacity_weight(account, now):
                        return account
        cumulative = self.cumulative_weights(accounts, now)
        index = bisect_right(cumulative, draw() * cumulative[-1])
        # draw() < 1, so index < n; the guard only protects against float rounding at the very top.
        return accounts[index if index < n else n - 1]

    @staticmethod
    def cumulative_weights(accounts: Sequence[Account], now: float) -> list[float]:
        """Running totals of ``capacity_weight`` over ``accounts``; ``capacity_weight`` inlined for speed."""
        out: list[float] = []
        append = out.append
        total = 0.0
        bonus = RESET_BONUS
        floor = MIN_REMAINING
        for a in accounts:
            # window_state(primary). Comparisons are written so NaN lands on the safe side.
            w = a.primary
            if w is None or (reset := w.reset_at) <= now:
                pu, pl = 0.0, 1.0
            else:
                pu = w.used_percent
                if not 0.0 <= pu <= 100.0:
                    pu = 100.0 if pu > 100.0 else 0.0
                try:
                    pl = (reset - now) / (w.window_minutes * 60.0)
                except ZeroDivisionError:
                    pl = 1.0
                if not 0.0 <= pl < 1.0:  # also a negative span
                    pl = 1.0
            # window_state(secondary), then binding_state (its `left` only matters when it may bind)
            w = a.secondary
            if w is not None and (reset := w.reset_at) > now:
                su = w.used_percent
                if not 0.0 <= su <= 100.0:
                    su = 100.0 if su > 100.0 else 0.0
                if su >= pu:
                    try:
                        sl = (reset - now) / (w.window_minutes * 60.0)
                    except ZeroDivisionError:
                        sl = 1.0
                    if not 0.0 <= sl < 1.0:
                        sl = 1.0
                    if su > pu or sl > pl:
                        pu, pl = su, sl
            elif pu == 0.0:  # an unknown or reset secondary (0 used, a whole window left) binds on a tie
                pl = 1.0
            remaining = 100.0 - pu
            if remaining < floor:
                remaining = floor
            weight = remaining * (1.0 + bonus * (1.0 - pl))
            n = a.inflight
            if n > 0:
                weight /= 1 + n
            total += weight
            append(total)
        return out


class RoundRobinStrategy:
    """Cycles through accounts in id order. The cursor is the last id served: the next pick is the smallest id
    after it, wrapping to the smallest id. Accounts missing from this call (unusable, already tried, removed) are
    skipped without disturbing the cycle, and new ones join it in their place. One pass, no sorting."""

    name = "round_robin"

    def __init__(self) -> None:
        self.cursor: str | None = None

    def select(self, accounts: Sequence[Account], now: float) -> Account | None:
        if not accounts:
            return None
        cursor = self.cursor
        first: Account | None = None  # smallest id overall
        after: Account | None = None  # smallest id greater than the cursor
        for a in accounts:
            aid = a.id
            if first is None or aid < first.id:
                first = a
            if cursor is not None and aid > cursor and (after is None or aid < after.id):
                after = a
        chosen = after if after is not None else first
        assert chosen is not None
        self.cursor = chosen.id
        return chosen


class FillFirstStrategy:
    """Concentrates load: the most-used account first (binding used percent at ``now``), ties by smallest id.

    The account being filled only gets more used, so it keeps being chosen until the caller stops offering it
    (rate limited, quota exceeded, already tried); then the next most used takes over. Fresh accounts are kept
    fresh for later. Stateless."""

    name = "fill_first"

    def select(self, accounts: Sequence[Account], now: float) -> Account | None:
        best: Account | None = None
        best_used = -1.0
        for a in accounts:
            used = used_percent(a, now)
            if used > best_used or (used == best_used and a.id < best.id):  # type: ignore[union-attr]
                best, best_used = a, used
        return best


class LeastUsedStrategy:
    """Spreads load: the lowest ``(inflight, used percent, last_used_at, id)``, i.e. fewest requests in flight,
    then lowest binding used percent at ``now``, then least recently used, then smallest id. Stateless."""

    name = "least_used"

    def select(self, accounts: Sequence[Account], now: float) -> Account | None:
        best: Account | None = None
        best_key: tuple[int, float, float, str] = (0, 0.0, 0.0, "")
        for a in accounts:
            n = a.inflight
            if best is not None and n > best_key[0]:
                continue  # loses on the first field: skip the rest of the key
            key = (n, used_percent(a, now), a.last_used_at, a.id)
            if best is None or key < best_key:
                best, best_key = a, key
        return best


def make_strategy(name: str, rng: random.Random | None = None) -> Strategy:
    """The strategy called ``name`` (one of ``STRATEGIES``); ``rng`` drives ``capacity`` (seed it for tests)."""
    factories: dict[str, Callable[[], Strategy]] = {
        "capacity": lambda: CapacityStrategy(rng),
        "round_robin": RoundRobinStrategy,
        "fill_first": FillFirstStrategy,
        "least_used": LeastUsedStrategy,
    }
    try:
        factory = factories[name]
    except KeyError:
        raise ValueError(f"unknown selection strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    return factory()
