"""Selection strategies: the exact account each one picks on crafted pools."""

from __future__ import annotations

import math
import random
from itertools import accumulate

import pytest

from codexlb.account import Account, Status, Tokens, Window
from codexlb.pool.selection import (
    DEFAULT_STRATEGY,
    REJECTION_MIN_ACCOUNTS,
    REJECTION_TRIES,
    STRATEGIES,
    WEIGHT_CEILING,
    CapacityStrategy,
    FillFirstStrategy,
    LeastUsedStrategy,
    RoundRobinStrategy,
    binding_state,
    capacity_weight,
    make_strategy,
    used_percent,
    window_state,
)

NOW = 1_000_000.0
PRIMARY_MIN = 300
SECONDARY_MIN = 7 * 24 * 60


def tokens() -> Tokens:
    return Tokens("at", "rt", "it", NOW + 3600, NOW)


def win(used: float, minutes: int = PRIMARY_MIN, left: float = 1.0) -> Window:
    """A window `used` percent full with fraction `left` of its span still to run."""
    return Window(used_percent=used, window_minutes=minutes, reset_at=NOW + left * minutes * 60)


def acct(id: str, p: Window | None = None, s: Window | None = None, *, inflight: int = 0,
         last_used_at: float = 0.0) -> Account:
    return Account(id=id, alias=id, email=None, plan="plus", tokens=tokens(), primary=p, secondary=s,
                   inflight=inflight, last_used_at=last_used_at)


class FixedRng(random.Random):
    """random() returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


# --- window and weight arithmetic -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (None, (0.0, 1.0)),
        (win(40, left=0.25), (40.0, 0.25)),
        (win(-5, left=0.5), (0.0, 0.5)),
        (win(130, left=0.5), (100.0, 0.5)),
        (win(float("nan"), left=0.5), (0.0, 0.5)),
        (Window(80, PRIMARY_MIN, NOW), (0.0, 1.0)),            # reset exactly now: fresh
        (Window(80, PRIMARY_MIN, NOW - 1), (0.0, 1.0)),        # reset in the past: stale figure ignored
        (Window(80, 0, NOW + 60), (80.0, 1.0)),                # no span: no notion of "left"
        (Window(80, PRIMARY_MIN, NOW + 10 * PRIMARY_MIN * 60), (80.0, 1.0)),  # reset beyond one span: clamped
    ],
)
def test_window_state(window, expected):
    assert window_state(window, NOW) == expected


@pytest.mark.parametrize(
    ("p", "s", "expected"),
    [
        (None, None, (0.0, 1.0)),
        (win(30, left=0.5), None, (30.0, 0.5)),
        (None, win(30, SECONDARY_MIN, 0.5), (30.0, 0.5)),
        (win(30, left=0.1), win(60, SECONDARY_MIN, 0.8), (60.0, 0.8)),  # more used binds
        (win(70, left=0.1), win(60, SECONDARY_MIN, 0.8), (70.0, 0.1)),
        (win(50, left=0.1), win(50, SECONDARY_MIN, 0.8), (50.0, 0.8)),  # tie: the one with more span left
        (win(50, left=0.9), win(50, SECONDARY_MIN, 0.2), (50.0, 0.9)),
        (win(0, left=0.1), None, (0.0, 1.0)),  # unknown secondary ties at 0 with a whole window left
    ],
)
def test_binding_state(p, s, expected):
    assert binding_state(acct("a", p, s), NOW) == expected


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        (acct("a"), 100.0),                                            # nothing known: full, no urgency
        (acct("a", win(25)), 75.0),
        (acct("a", win(25, left=0.0001)), 75.0 * (2 - 0.0001)),
        (acct("a", win(25, left=0.5)), 75.0 * 1.5),
        (acct("a", win(25, left=0.5), inflight=1), 75.0 * 1.5 / 2),
        (acct("a", win(25, left=0.5), inflight=3), 75.0 * 1.5 / 4),
        (acct("a", win(25, left=0.5), inflight=-2), 75.0 * 1.5),      # a bogus negative count is ignored
        (acct("a", win(100, left=0.5)), 0.01 * 1.5),                  # full but offered: tiny, not zero
        (acct("a", win(20, left=0.5), win(60, SECONDARY_MIN, 0.75)), 40.0 * 1.25),
    ],
)
def test_capacity_weight(account, expected):
    assert capacity_weight(account, NOW) == pytest.approx(expected, rel=1e-12)


def random_pool(rng: random.Random, n: int) -> list[Account]:
    def maybe_window(minutes: int) -> Window | None:
        kind = rng.random()
        if kind < 0.15:
            return None
        if kind < 0.25:
            return Window(rng.uniform(0, 100), minutes, NOW - rng.uniform(0, 100))  # already reset
        if kind < 0.3:
            return Window(rng.choice([0.0, 100.0, 120.0, -3.0]), minutes, NOW + rng.uniform(0, minutes * 60))
        return Window(round(rng.uniform(0, 100), rng.choice([0, 1, 3])), minutes,
                      NOW + rng.uniform(0, minutes * 60 * 1.2))

    return [acct(f"acct-{i:04d}", maybe_window(PRIMARY_MIN), maybe_window(SECONDARY_MIN),
                 inflight=rng.choice([0, 0, 0, 1, 2, 5])) for i in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_fast_cumulative_weights_match_the_reference_formula(seed):
    pool = random_pool(random.Random(seed), 200)
    expected = list(accumulate(capacity_weight(a, NOW) for a in pool))
    got = CapacityStrategy.cumulative_weights(pool, NOW)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_fast_used_percent_matches_binding_state(seed):
    for a in random_pool(random.Random(seed), 200):
        assert used_percent(a, NOW) == binding_state(a, NOW)[0]


def test_weight_ceiling_is_the_largest_possible_weight():
    assert WEIGHT_CEILING == 200.0
    top = acct("a", win(0, left=1e-12), win(0, SECONDARY_MIN, 1e-12))
    assert capacity_weight(top, NOW) == pytest.approx(WEIGHT_CEILING)
    for a in random_pool(random.Random(0), 500):
        assert 0 < capacity_weight(a, NOW) <= WEIGHT_CEILING


# --- capacity -------------------------------------------------------------------------------------------------

def test_capacity_bisects_the_cumulative_weights_exactly():
    pool = [acct("a", win(90)), acct("b", win(70)), acct("c", win(40))]  # weights 10, 30, 60 -> cumulative 10, 40, 100
    picks = [CapacityStrategy(FixedRng(r)).select(pool, NOW).id
             for r in (0.0, 0.0999, 0.1, 0.3999, 0.4, 0.9999999)]
    assert picks == ["a", "a", "b", "b", "c", "c"]


@pytest.mark.parametrize(
    ("preferred", "other"),
    [
        (acct("x", win(20)), acct("y", win(60))),                          # more remaining
        (acct("x", win(50, left=0.1)), acct("y", win(50, left=0.9))),      # earlier reset of the binding window
        (acct("x", win(50), inflight=0), acct("y", win(50), inflight=1)),  # fewer in flight
        (acct("x", win(10, left=0.9), win(20, SECONDARY_MIN, 0.05)),       # binding = secondary, resetting soon
         acct("y", win(20, left=0.6), win(10, SECONDARY_MIN, 0.9))),       # binding = primary, same used, later
        (acct("x", Window(95, PRIMARY_MIN, NOW - 1)), acct("y", win(50))),  # its window already reset: fresh
    ],
)
@pytest.mark.parametrize("order", ["preferred-first", "preferred-last"])
def test_capacity_prefers(preferred, other, order):
    wx, wy = capacity_weight(preferred, NOW), capacity_weight(other, NOW)
    assert wx > 1.3 * wy
    pool = [preferred, other] if order == "preferred-first" else [other, preferred]
    strategy = CapacityStrategy(random.Random(7))
    picks = [strategy.select(pool, NOW).id for _ in range(8000)]
    assert picks.count("x") / len(picks) == pytest.approx(wx / (wx + wy), abs=0.02)


def test_capacity_share_follows_remaining_capacity():
    pool = [acct("big", win(20)), acct("small", win(80))]  # remaining 80 vs 20: expected share 0.8
    strategy = CapacityStrategy(random.Random(12345))
    picks = [strategy.select(pool, NOW).id for _ in range(20000)]
    assert 0.78 < picks.count("big") / len(picks) < 0.82


def test_capacity_share_with_reset_and_load():
    # weights: a 50*2.0/1 = ~100 (resets now-ish), b 50*1.0/1 = 50, c 100*1.0/2 = 50 -> shares 0.5, 0.25, 0.25
    pool = [acct("a", win(50, left=1e-9)), acct("b", win(50)), acct("c", inflight=1)]
    strategy = CapacityStrategy(random.Random(99))
    picks = [strategy.select(pool, NOW).id for _ in range(40000)]
    shares = {k: picks.count(k) / len(picks) for k in "abc"}
    assert shares["a"] == pytest.approx(0.5, abs=0.015)
    assert shares["b"] == pytest.approx(0.25, abs=0.015)
    assert shares["c"] == pytest.approx(0.25, abs=0.015)


def test_capacity_spreads_equal_accounts():
    pool = [acct(f"a{i}", win(30)) for i in range(5)]
    strategy = CapacityStrategy(random.Random(3))
    picks = [strategy.select(pool, NOW).id for _ in range(10000)]
    for i in range(5):
        assert 0.18 < picks.count(f"a{i}") / len(picks) < 0.22


def test_capacity_is_deterministic_given_the_rng_seed():
    pool = random_pool(random.Random(1), 50)
    a, b = CapacityStrategy(random.Random(42)), CapacityStrategy(random.Random(42))
    seq_a = [a.select(pool, NOW).id for _ in range(200)]
    seq_b = [b.select(pool, NOW).id for _ in range(200)]
    assert seq_a == seq_b
    assert len(set(seq_a)) > 10  # and it does spread


def test_capacity_still_picks_when_every_account_is_full():
    pool = [acct("a", win(100)), acct("b", win(120))]
    strategy = CapacityStrategy(random.Random(0))
    assert {strategy.select(pool, NOW).id for _ in range(200)} == {"a", "b"}


def test_capacity_single_account_draws_nothing():
    rng = FixedRng()  # would raise IndexError if drawn from
    only = acct("only", win(99))
    assert CapacityStrategy(rng).select([only], NOW) is only


# capacity over large pools: rejection sampling first, the exact pass as fallback

def test_rejection_path_starts_at_the_threshold():
    assert (REJECTION_MIN_ACCOUNTS, REJECTION_TRIES) == (64, 32)
    small = [acct(f"a{i:02d}") for i in range(REJECTION_MIN_ACCOUNTS - 1)]
    rng = FixedRng(0.5)  # one draw: the exact pass
    assert CapacityStrategy(rng).select(small, NOW) is small[31]
    assert rng.values == []


def test_rejection_accepts_with_probability_weight_over_ceiling():
    pool = [acct(f"a{i:02d}") for i in range(64)]  # weight 100 each: accept when u * 200 < 100
    rng = FixedRng(0.1, 0.4999)
    assert CapacityStrategy(rng).select(pool, NOW) is pool[6]
    assert rng.values == []
    rng = FixedRng(0.1, 0.5, 0.75, 0.0)  # first trial rejected, second accepted
    assert CapacityStrategy(rng).select(pool, NOW) is pool[48]
    assert rng.values == []


def test_rejection_falls_back_to_the_exact_pass():
    pool = [acct(f"a{i:02d}", win(100)) for i in range(64)]  # all full: weight 0.01, almost always rejected
    rng = FixedRng(*([0.3, 0.999] * REJECTION_TRIES), 0.5)
    assert CapacityStrategy(rng).select(pool, NOW) is pool[32]
    assert rng.values == []


def test_rejection_guards_index_rounding():
    pool = [acct(f"a{i:02d}") for i in range(64)]
    # An index draw that would land on n is skipped (its acceptance draw is not taken).
    strategy = CapacityStrategy(FixedRng(1.0, 0.2, 0.0))
    assert strategy.select(pool, NOW) is pool[12]


def test_large_pool_shares_follow_weights():
    kinds = [win(10, left=0.9), win(50, left=0.1), win(80), win(95, left=0.5)]
    pool = [acct(f"a{i:03d}", kinds[i % 4], inflight=(i // 4) % 2) for i in range(128)]
    weights = [capacity_weight(a, NOW) for a in pool]
    total = sum(weights)
    expected = [sum(w for i, w in enumerate(weights) if i % 4 == k) / total for k in range(4)]
    strategy = CapacityStrategy(random.Random(2024))
    counts = [0, 0, 0, 0]
    draws = 40_000
    for _ in range(draws):
        counts[int(strategy.select(pool, NOW).id[1:]) % 4] += 1
    for k in range(4):
        assert counts[k] / draws == pytest.approx(expected[k], abs=0.01)


def test_large_pool_matches_the_exact_path_distribution():
    pool = random_pool(random.Random(11), 300)
    weights = [capacity_weight(a, NOW) for a in pool]
    median = sorted(weights)[len(weights) // 2]
    heavy = {a.id for a, w in zip(pool, weights) if w > median}
    expected = sum(w for w in weights if w > median) / sum(weights)
    strategy = CapacityStrategy(random.Random(5))
    draws = 30_000
    share = sum(strategy.select(pool, NOW).id in heavy for _ in range(draws)) / draws
    assert share == pytest.approx(expected, abs=0.012)


def test_large_pool_of_nearly_full_accounts_still_follows_weights():
    pool = [acct(f"a{i:03d}", win(99.9 if i % 2 else 99.6)) for i in range(100)]  # weights 0.1 and 0.4
    strategy = CapacityStrategy(random.Random(8))
    draws = 5000
    even = sum(int(strategy.select(pool, NOW).id[1:]) % 2 == 0 for _ in range(draws)) / draws
    assert even == pytest.approx(0.8, abs=0.02)


def test_large_pool_is_deterministic_given_the_rng_seed():
    pool = random_pool(random.Random(3), 1000)
    a, b = CapacityStrategy(random.Random(42)), CapacityStrategy(random.Random(42))
    seq_a = [a.select(pool, NOW).id for _ in range(300)]
    assert seq_a == [b.select(pool, NOW).id for _ in range(300)]
    assert len(set(seq_a)) > 200


# --- round robin ----------------------------------------------------------------------------------------------

def test_round_robin_cycles_in_id_order_whatever_the_input_order():
    pool = [acct("c"), acct("a"), acct("b")]
    rr = RoundRobinStrategy()
    assert [rr.select(pool, NOW).id for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_skips_missing_accounts_and_keeps_its_place():
    a, b, c, d = acct("a"), acct("b"), acct("c"), acct("d")
    rr = RoundRobinStrategy()
    assert rr.select([a, b, c, d], NOW).id == "a"
    assert rr.select([a, c, d], NOW).id == "c"      # b unusable: skipped
    assert rr.select([a, b, c, d], NOW).id == "d"   # b back, but the cycle has passed it
    assert rr.select([a, b, c], NOW).id == "a"      # d gone: wrap
    assert rr.select([b, c, d], NOW).id == "b"      # a already tried for this request
    assert rr.select([a], NOW).id == "a"            # only one left: it, even if it was not "next"
    assert rr.select([a, b], NOW).id == "b"


def test_round_robin_new_account_joins_in_id_order():
    rr = RoundRobinStrategy()
    pool = [acct("a"), acct("c")]
    assert [rr.select(pool, NOW).id for _ in range(2)] == ["a", "c"]
    pool.append(acct("b"))
    assert [rr.select(pool, NOW).id for _ in range(4)] == ["a", "b", "c", "a"]


def test_round_robin_ignores_usage():
    rr = RoundRobinStrategy()
    pool = [acct("a", win(99), inflight=9), acct("b", win(0))]
    assert [rr.select(pool, NOW).id for _ in range(4)] == ["a", "b", "a", "b"]


# --- fill first -----------------------------------------------------------------------------------------------

def test_fill_first_sticks_to_the_first_until_it_is_no_longer_offered():
    a, b, c = acct("a"), acct("b"), acct("c")
    ff = FillFirstStrategy()
    assert [ff.select([c, b, a], NOW).id for _ in range(3)] == ["a", "a", "a"]
    a.primary = win(40)  # as it fills it stays first
    a.inflight = 5
    assert ff.select([c, b, a], NOW).id == "a"
    assert ff.select([c, b], NOW).id == "b"  # a rate limited / tried: the next in order
    assert ff.select([c], NOW).id == "c"


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        ([acct("a", win(10)), acct("b", win(60)), acct("c", win(30))], "b"),       # most used first
        ([acct("a", win(10)), acct("b", None, win(60, SECONDARY_MIN))], "b"),      # by binding (max) window
        ([acct("a", win(10)), acct("b", Window(60, PRIMARY_MIN, NOW - 5))], "a"),  # b's window has reset: 0
        ([acct("b", win(30)), acct("a", win(30))], "a"),                           # tie: smallest id
        ([acct("z", win(100)), acct("a", win(10))], "z"),                          # full but still offered: it
    ],
)
def test_fill_first_order(pool, expected):
    assert FillFirstStrategy().select(pool, NOW).id == expected


# --- least used -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        ([acct("a", win(0), inflight=2), acct("b", win(90), inflight=1)], "b"),   # in flight first
        ([acct("a", win(50), inflight=1), acct("b", win(40), inflight=1)], "b"),  # then used percent
        ([acct("a", win(10), win(70, SECONDARY_MIN)), acct("b", win(60))], "b"),  # binding window counts
        ([acct("a", Window(90, PRIMARY_MIN, NOW - 1)), acct("b", win(5))], "a"),  # reset window: 0 used
        ([acct("a", win(30), last_used_at=NOW - 5), acct("b", win(30), last_used_at=NOW - 50)], "b"),  # then LRU
        ([acct("b", win(30), last_used_at=7.0), acct("a", win(30), last_used_at=7.0)], "a"),  # then id
        ([acct("a"), acct("b", win(0.001))], "a"),                                # unknown counts as 0
    ],
)
def test_least_used_order(pool, expected):
    assert LeastUsedStrategy().select(pool, NOW).id == expected
    assert LeastUsedStrategy().select(list(reversed(pool)), NOW).id == expected


def test_least_used_full_ordering():
    pool = [
        acct("e", win(0), inflight=1),
        acct("d", win(80), last_used_at=1.0),
        acct("c", win(20), last_used_at=9.0),
        acct("b", win(20), last_used_at=3.0),
        acct("a", win(20), last_used_at=3.0),
    ]
    lu = LeastUsedStrategy()
    order = []
    remaining = list(pool)
    while remaining:
        chosen = lu.select(remaining, NOW)
        order.append(chosen.id)
        remaining.remove(chosen)
    assert order == ["a", "b", "c", "d", "e"]


# --- common ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STRATEGIES)
def test_empty_input_selects_nothing(name):
    assert make_strategy(name, random.Random(0)).select([], NOW) is None


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_single_candidate_is_chosen(name):
    only = acct("only", win(100), inflight=50)
    assert make_strategy(name, random.Random(0)).select([only], NOW) is only


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategies_do_not_look_at_status_or_mutate(name):
    pool = random_pool(random.Random(5), 30)
    pool[0].status = Status.PAUSED  # the caller filters; a strategy must not second-guess it
    before = [(a.id, a.inflight, a.last_used_at, a.primary, a.secondary) for a in pool]
    strategy = make_strategy(name, random.Random(0))
    for _ in range(50):
        assert strategy.select(pool, NOW) in pool
    assert [(a.id, a.inflight, a.last_used_at, a.primary, a.secondary) for a in pool] == before


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategies_accept_tuples(name):
    pool = (acct("a", win(10)), acct("b", win(20)))
    assert make_strategy(name, random.Random(0)).select(pool, NOW) in pool


def test_make_strategy_names_and_types():
    assert STRATEGIES == ("capacity", "round_robin", "fill_first", "least_used")
    assert DEFAULT_STRATEGY == "capacity"
    kinds = {name: type(make_strategy(name)) for name in STRATEGIES}
    assert kinds == {"capacity": CapacityStrategy, "round_robin": RoundRobinStrategy,
                     "fill_first": FillFirstStrategy, "least_used": LeastUsedStrategy}
    for name in STRATEGIES:
        assert make_strategy(name).name == name


def test_make_strategy_uses_the_given_rng_and_fresh_state():
    rng = random.Random(0)
    assert make_strategy("capacity", rng).rng is rng
    assert make_strategy("round_robin") is not make_strategy("round_robin")


def test_make_strategy_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown selection strategy 'random'; choose one of capacity, "
                                         r"round_robin, fill_first, least_used"):
        make_strategy("random")


def test_used_percent_is_the_binding_window():
    assert used_percent(acct("a", win(12.5), win(40, SECONDARY_MIN)), NOW) == 40.0
    assert used_percent(acct("a"), NOW) == 0.0
    assert not math.isnan(used_percent(acct("a", win(float("nan"))), NOW))
