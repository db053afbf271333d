from __future__ import annotations

import pytest

from codexlb.auth.authjson import from_tokens
from codexlb.pool.roster import Roster


def login_of(sim_account, issued_at: float = 0.0):
    """A Login for a sim account's current tokens, as `accounts import` would read them."""
    return from_tokens(sim_account.access_token, sim_account.refresh_token, sim_account.id_token,
                       account_id=sim_account.account_id, issued_at=issued_at, origin="test")


@pytest.fixture
async def roster(store):
    return await Roster.load(store)
