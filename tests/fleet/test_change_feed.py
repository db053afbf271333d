"""A change made on one replica takes effect on the others within a second (the change feed), and a replica
that lost its connection to the database reads everything again when it is back."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import time

import pytest

from codexlb.account import Status
from codexlb.services import ADMIN, KEYS, ROSTER
from codexlb.store.sqlite import DB_FILE_NAME
from tests.proxy.conftest import start_proxy
from tests.test_one_server import serve_process

SECRET = base64.b64encode(b"F" * 32).decode()
BOUND_S = 1.0


async def within(condition, bound_s: float = 5.0) -> float:
    """Seconds until `condition()` holds (polled every 10 ms), failing past `bound_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > bound_s:
            raise AssertionError(f"not within {bound_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture(params=["postgres", "sqlite"])
async def replicas(request, aiohttp_server, settings, sim, tmp_path):
    """Two replicas on one database: PostgreSQL, or one SQLite file shared by two processes' worth of stores."""
    if request.param == "postgres":
        server = request.getfixturevalue("pg_server")
        shared = {"database_url": server.url(await server.acreate_database()), "secret_key": SECRET}
        dirs = [tmp_path / "a", tmp_path / "b"]
    else:
        shared = {"database_url": "", "secret_key": SECRET}
        dirs = [tmp_path / "shared", tmp_path / "shared"]
    a = await start_proxy(aiohttp_server, dataclasses.replace(settings, data_dir=dirs[0], **shared), sim)
    b = await start_proxy(aiohttp_server, dataclasses.replace(settings, data_dir=dirs[1], **shared), sim, accounts=0)
    if request.param == "sqlite":
        assert (dirs[0] / DB_FILE_NAME).exists()
    await within(lambda: len(b.app[ROSTER].all()) == 3)
    return a, b


async def test_a_key_revoked_on_one_replica_is_refused_on_the_other_within_a_second(replicas):
    a, b = replicas
    key, record = await a.app[KEYS].create("laptop")
    created = await within(lambda: b.app[KEYS].verify(key) is not None)
    await a.app[KEYS].revoke("laptop")
    revoked = await within(lambda: b.app[KEYS].verify(key) is None)
    print(f"\nkey created on A usable on B after {created * 1000:.0f} ms; revoked on A refused on B after "
          f"{revoked * 1000:.0f} ms")
    assert created < BOUND_S and revoked < BOUND_S


async def test_an_account_paused_or_found_exhausted_on_one_replica_is_left_alone_on_the_other(replicas):
    a, b = replicas
    first, second = a.app[ROSTER].all()[:2]
    await a.app[ROSTER].pause(first.alias)
    paused = await within(lambda: b.app[ROSTER].by_id(first.id).status is Status.PAUSED)
    assert first.id not in {x.id for x in b.app[ROSTER].usable(time.time())}
    a.app[ROSTER].note_windows(second, {"primary": dataclasses.replace(
        second.primary or _window(), used_percent=100.0, reset_at=time.time() + 600)}, time.time())
    exhausted = await within(lambda: b.app[ROSTER].by_id(second.id).status is Status.QUOTA_EXCEEDED)
    print(f"\npaused on B after {paused * 1000:.0f} ms; exhausted on B after {exhausted * 1000:.0f} ms")
    assert paused < BOUND_S and exhausted < BOUND_S


async def test_a_password_set_on_one_replica_holds_on_the_other(replicas, http):
    a, b = replicas
    async with http.post(a.url + "/api/admin/password", json={"password": "correct horse battery"}) as resp:
        assert resp.status == 200, await resp.text()
    took = await within(lambda: b.app[ADMIN].password_hash is not None)
    async with http.post(b.url + "/api/login", json={"password": "correct horse battery"}) as resp:
        assert resp.status == 200
    print(f"\npassword on B after {took * 1000:.0f} ms")
    assert took < BOUND_S


async def test_a_replica_that_lost_the_feed_reads_everything_again(replicas, pg_server, request):
    a, b = replicas
    if request.node.callspec.params["replicas"] != "postgres":
        pytest.skip("one SQLite file has no connection to lose")
    key, _ = await a.app[KEYS].create("before")
    await within(lambda: b.app[KEYS].verify(key) is not None)
    # Every connection cut (B's listener among them); the revoke lands while B may not be listening.
    await pg_server.akill_connections()
    await a.app[KEYS].revoke("before")
    first = a.app[ROSTER].all()[0]
    await a.app[ROSTER].pause(first.alias)
    took = await within(lambda: b.app[KEYS].verify(key) is None
                        and b.app[ROSTER].by_id(first.id).status is Status.PAUSED)
    print(f"\nafter the cut, B caught up in {took * 1000:.0f} ms")


def _window():
    from codexlb.account import Window

    return Window(0.0, 300, time.time() + 600)


async def test_a_dashboard_login_on_one_replica_holds_on_the_other_and_a_logout_ends_it(replicas, http):
    a, b = replicas
    async with http.post(a.url + "/api/admin/password", json={"password": "correct horse battery"}) as resp:
        assert resp.status == 200
    await within(lambda: b.app[ADMIN].password_hash is not None)
    async with http.post(a.url + "/api/login", json={"password": "correct horse battery"}) as resp:
        assert resp.status == 200
        cookie = resp.cookies["codexlb_session"].value
    http.cookie_jar.clear()
    jar = {"Cookie": f"codexlb_session={cookie}"}
    async with http.get(b.url + "/api/keys") as resp:
        assert resp.status == 401  # with a password set, this machine too needs a session

    async def status_on_b() -> int:
        async with http.get(b.url + "/api/keys", headers=jar) as resp:
            return resp.status

    assert await status_on_b() == 200  # stored before the login was answered: no wait
    async with http.post(b.url + "/api/logout", headers=jar) as resp:
        assert resp.status == 200
    took = await within(lambda: a.app[ADMIN].session(cookie) is None)
    print(f"\nlogout on B ended the session on A after {took * 1000:.0f} ms")
    assert took < BOUND_S


async def test_two_serve_processes_a_key_revoked_on_one_is_refused_on_the_other(database_url, tmp_path, http):
    """The headline with real `codexlb serve` processes on one PostgreSQL database, timed from A's answer to
    the revocation (it comes once the revocation is committed) to B's first refusal."""
    if not database_url:
        pytest.skip("PostgreSQL pass only: two `serve` processes cannot share one data dir, where the SQLite "
                    "file lives (the workers of one `serve --workers` can: the in-process tests above)")
    secret = ("--secret-key", base64.b64encode(os.urandom(32)).decode())
    async with serve_process(tmp_path / "a", *secret) as (_, a_url):
        admin = {"Authorization": f"Bearer {(tmp_path / 'a' / 'admin.token').read_text().strip()}"}
        keys = {}
        for name in ("other", "ci"):  # "other" stays: with no key left, B would serve anyone on loopback
            async with http.post(f"{a_url}/api/keys", json={"name": name}, headers=admin) as resp:
                assert resp.status == 201, await resp.text()
                keys[name] = (await resp.json())["key"]

        async with serve_process(tmp_path / "b", *secret) as (_, b_url):  # it reads the keys as it starts
            async def status_on_b() -> int:
                async with http.get(f"{b_url}/v1/models", headers={"Authorization": f"Bearer {keys['ci']}"}) as resp:
                    return resp.status

            assert await status_on_b() != 401
            async with http.delete(f"{a_url}/api/keys/ci", headers=admin) as resp:
                assert resp.status == 200, await resp.text()
            refused = await until_status(status_on_b, lambda status: status == 401, bound_s=5.0)
    print(f"\nserve processes on PostgreSQL: key revoked on A refused on B after {refused * 1000:.1f} ms")
    assert refused < BOUND_S


async def until_status(status, wanted, bound_s: float) -> float:
    """Seconds until `wanted(await status())` (asked back to back), failing past `bound_s`."""
    started = time.monotonic()
    while not wanted(await status()):
        if time.monotonic() - started > bound_s:
            raise AssertionError(f"not within {bound_s} s")
    return time.monotonic() - started
