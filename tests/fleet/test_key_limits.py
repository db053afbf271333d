"""Per-key limits hold across replicas sharing one database: a burst split across two goes over a requests-per-
minute limit by no more than the documented bound, (replicas - 1) x a tenth of the limit."""

from __future__ import annotations

import asyncio

from codexlb.key_limits.enforce import LIMITS_KEY
from codexlb.services import KEYS
from tests.fleet.conftest import start_fleet
from tests.keys.test_limits import T0, Clock
from tests.simclient import body, user

RPM = 30
BURST = 2 * RPM


async def test_a_burst_split_across_two_replicas_stays_within_the_bound(fleet_database, aiohttp_server, settings,
                                                                         sim, http):
    replicas = await start_fleet(aiohttp_server, settings, sim, fleet_database, replicas=2)
    clock = Clock(T0)  # one minute for the whole burst, whatever the machine's speed
    for replica in replicas:
        replica.app[LIMITS_KEY].clock = clock
    key, _ = await replicas[0].app[KEYS].create("team", {"rpm": RPM})
    await replicas[1].app[KEYS].reload()  # as the change feed would, a moment later

    async def one(n: int) -> int:
        async with http.post(f"{replicas[n % 2].url}/v1/responses", json=body(user("hi"), stream=True),
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(one(n) for n in range(BURST)))
    admitted = statuses.count(200)
    bound = (len(replicas) - 1) * max(1, RPM // 10)
    assert set(statuses) <= {200, 429}
    assert RPM <= admitted <= RPM + bound, (admitted, statuses)
    assert len(sim.backend.records) == admitted
    # Both replicas told the database: the fleet's count is what was admitted.
    for replica in replicas:
        await replica.app[LIMITS_KEY].flush()
    records = await replicas[0].app[KEYS].list()
    use = await replicas[1].app[LIMITS_KEY].use(records)
    assert use[records[0].id]["rpm"]["used"] == admitted
