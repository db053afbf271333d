"""Keys as codexlb makes, stores and checks them: random, hashed, verified from memory, revocable."""

from __future__ import annotations

import hashlib
import re

import pytest

from codexlb import keys as keys_module
from codexlb.keys import KeyRing, KeyRingError, digest, generate

KEY_FORMAT = re.compile(r"^sk-clb-[A-Za-z0-9_-]{43}$")


@pytest.fixture
async def ring(store):
    return await KeyRing.load(store)


def test_keys_are_random_and_well_formed():
    made = {generate() for _ in range(200)}
    assert len(made) == 200
    assert all(KEY_FORMAT.match(k) for k in made)


def test_the_digest_is_sha256_of_the_whole_key():
    key = generate()
    assert digest(key) == hashlib.sha256(key.encode()).digest()
    assert digest(key) != digest(key[:-1] + ("A" if key[-1] != "A" else "B"))


async def test_create_stores_a_digest_and_a_prefix_never_the_key(ring, store, tmp_path):
    key, record = await ring.create("laptop", {"max_concurrency": 3})
    assert KEY_FORMAT.match(key)
    assert record.name == "laptop" and record.max_concurrency == 3 and record.status == "active"
    assert record.prefix == key[:11] and record.hash == hashlib.sha256(key.encode()).digest()
    rows = [tuple(row) for row in await store.db.fetch("SELECT * FROM api_keys")]
    assert [(r[0], r[1], r[2], bytes(r[3])) for r in rows] == [(record.id, "laptop", key[:11], record.hash)]
    assert key not in repr(rows) and key[11:] not in repr(rows)
    await store.close()
    for path in (tmp_path / "store-data").iterdir():
        raw = path.read_bytes()
        assert key.encode() not in raw and key[11:].encode() not in raw, path


async def test_verify(ring):
    key, record = await ring.create("a")
    other, _ = await ring.create("b")
    assert ring.verify(key) is record
    assert ring.verify(other) is not record
    for wrong in ("", "sk-clb-", key[:-1], key + "x", key[:-1] + ("A" if key[-1] != "A" else "B"),
                  key.replace("sk-clb-", "sk-xxx-"), key[:-1] + "é", "Bearer " + key, generate()):
        assert ring.verify(wrong) is None, wrong


async def test_revoke_takes_effect_at_once_and_is_durable(ring, store):
    key, record = await ring.create("ci")
    assert ring.has_keys
    revoked = await ring.revoke("ci")
    assert revoked.id == record.id and revoked.status == "revoked"
    assert ring.verify(key) is None and not ring.has_keys
    assert (await KeyRing.load(store)).verify(key) is None
    listed = await ring.list()
    assert [(r.id, r.status) for r in listed] == [(record.id, "revoked")]
    with pytest.raises(KeyRingError, match="already revoked"):
        await ring.revoke(record.id)
    with pytest.raises(KeyRingError, match="no API key 'nobody'") as missing:
        await ring.revoke("nobody")
    assert missing.value.not_found


async def test_names(ring):
    _, first = await ring.create()
    _, second = await ring.create()
    assert (first.name, second.name) == ("key-1", "key-2")
    await ring.create("ci")
    with pytest.raises(KeyRingError, match="already named 'ci'"):
        await ring.create("ci")
    await ring.revoke("ci")
    await ring.create("ci")  # a revoked key's name is free again
    for bad in ("", "has space", "-dash", "x" * 65, "a/b"):
        with pytest.raises(KeyRingError, match="must be 1-64"):
            await ring.create(bad)
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(KeyRingError, match="at least 1|whole number"):
            await ring.create("n", {"max_concurrency": bad})


async def test_revoke_by_id_or_name(ring):
    _, a = await ring.create("a")
    _, b = await ring.create("b")
    assert (await ring.revoke(b.id)).id == b.id
    assert (await ring.revoke("a")).id == a.id


async def test_last_use_is_written_at_most_once_a_minute(ring, store, monkeypatch):
    key, record = await ring.create("a")
    writes: list[tuple[str, float]] = []
    real_touch = store.touch_api_key_soon
    monkeypatch.setattr(store, "touch_api_key_soon", lambda key_id, at: (writes.append((key_id, at)),
                                                                        real_touch(key_id, at)))
    clock = [1000.0]
    monkeypatch.setattr(keys_module.time, "time", lambda: clock[0])
    for _ in range(100):
        assert ring.verify(key) is record
        clock[0] += 0.5  # 100 requests over 50 seconds
    assert writes == [(record.id, 1000.0)]
    assert record.last_used_at == 1049.5
    clock[0] = 1061.0
    ring.verify(key)
    assert writes == [(record.id, 1000.0), (record.id, 1061.0)]
    clock[0] = 1070.0
    ring.verify(key)
    ring.flush_last_used()  # shutdown: the last use is not lost
    assert writes[-1] == (record.id, 1070.0)
    # Database work runs in order, so this read comes after the queued writes.
    assert [r.last_used_at for r in await store.list_api_keys()] == [1070.0]
    assert [r.last_used_at for r in await ring.list()] == [1070.0]


async def test_verify_never_calls_the_database(ring, store, monkeypatch):
    key, _ = await ring.create("a")

    def no_db(*_args, **_kwargs):
        raise AssertionError("database call on the request path")

    for name in ("fetch", "execute", "transaction", "barrier"):
        monkeypatch.setattr(store.db, name, no_db)
    monkeypatch.setattr(store.db, "submit", lambda *_: None)  # the once-a-minute queued write is allowed
    for _ in range(1000):
        assert ring.verify(key) is not None
        assert ring.verify("sk-clb-" + "x" * 43) is None
