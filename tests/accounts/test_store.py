"""Accounts survive restarts and crashes; secrets are sealed; a wrong key is a clear error."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from codexlb.account import Account, Status, Window
from codexlb.pool.roster import Roster
from codexlb.store import SecretKeyError, Store, UsageRecord
from codexlb.store import accounts as account_rows
from codexlb.store import schema as db_module
from codexlb.store.engine import DatabaseError
from tests.accounts.conftest import login_of
from tests.serving import child_env


async def test_restart_keeps_accounts_statuses_and_resets(tmp_path, sim):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    store = await Store.open(data)
    roster = await Roster.load(store)
    for sim_account in sim.backend.accounts:
        await roster.add_login(login_of(sim_account))
    first, second, third = roster.all()
    reset = time.time() + 3600
    roster.note_windows(first, {"primary": Window(100.0, 300, reset), "secondary": Window(40.0, 10080, reset + 9)},
                        time.time())
    await roster.pause(second.alias)
    roster.mark_reauth_required(third, "refresh refused: refresh_token_reused")
    await store.close()

    reopened = await Store.open(data)
    again = {a.id: a for a in (await Roster.load(reopened)).all()}
    assert again[first.id].status is Status.QUOTA_EXCEEDED and again[first.id].status_until == reset
    assert again[first.id].primary == Window(100.0, 300, reset)
    assert again[first.id].secondary == Window(40.0, 10080, reset + 9)
    assert again[second.id].status is Status.PAUSED
    assert again[third.id].status is Status.REAUTH_REQUIRED
    assert again[third.id].status_reason == "refresh refused: refresh_token_reused"
    assert again[first.id].tokens == first.tokens and again[first.id].alias == first.alias
    await reopened.close()


@pytest.mark.sqlite_only
async def test_files_are_private_and_tokens_sealed(tmp_path, sim):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    store = await Store.open(data)
    roster = await Roster.load(store)
    await roster.add_login(login_of(sim.backend.accounts[0]))
    await store.close()
    assert oct((data / "secret.key").stat().st_mode & 0o777) == "0o600"
    assert oct((data / "codexlb.db").stat().st_mode & 0o777) == "0o600"
    raw = (data / "codexlb.db").read_bytes()
    account = sim.backend.accounts[0]
    for token in (account.access_token, account.refresh_token, account.id_token):
        assert token.encode() not in raw


async def test_wrong_key_is_a_clear_error(tmp_path, sim):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    store = await Store.open(data)
    await (await Roster.load(store)).add_login(login_of(sim.backend.accounts[0]))
    await store.close()
    other = tmp_path / "other.key"
    other.write_text("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=\n")
    with pytest.raises(SecretKeyError, match="does not match"):
        await Store.open(data, other)
    (data / "secret.key").unlink()
    with pytest.raises(SecretKeyError, match="does not exist, but the database does"):
        await Store.open(data)


def test_serve_with_wrong_key_exits_with_one_line(tmp_path):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    env = child_env()
    # A command that writes makes the database (a list leaves a data dir as it found it).
    first = subprocess.run([sys.executable, "-m", "codexlb", "keys", "create", "--data-dir", str(data)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    bad = tmp_path / "bad.key"
    bad.write_text("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=\n")
    proc = subprocess.run([sys.executable, "-m", "codexlb", "serve", "--port", "0", "--data-dir", str(data),
                           "--secret-key-file", str(bad)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("codexlb: error: the secret key does not match")
    assert proc.stderr.count("\n") == 1


@pytest.mark.sqlite_only
async def test_migration_takes_a_backup_first(tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    await (await Store.open(data)).close()
    shipped = db_module.SCHEMA_VERSION
    monkeypatch.setattr(db_module, "MIGRATIONS", (*db_module.MIGRATIONS, "ALTER TABLE accounts ADD COLUMN note TEXT"))
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", len(db_module.MIGRATIONS))
    store = await Store.open(data)
    await store.close()
    backups = list(data.glob(f"codexlb.db.v{shipped}-*.bak"))
    assert len(backups) == 1 and oct(backups[0].stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(data / "codexlb.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == shipped + 1
        assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(accounts)")]
    with sqlite3.connect(backups[0]) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == shipped


@pytest.mark.sqlite_only
async def test_a_version_1_database_gains_api_keys_and_keeps_its_accounts(tmp_path, monkeypatch, sim):
    """An upgrade from the release before API keys: accounts (tokens still sealed) survive migration 2."""
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    monkeypatch.setattr(db_module, "MIGRATIONS", db_module.MIGRATIONS[:1])
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", 1)
    store = await Store.open(data)
    login = login_of(sim.backend.accounts[0])
    before = Account(id=login.account_id, alias="first", email=login.email, plan=login.plan, tokens=login.tokens,
                     created_at=time.time())
    # As that release wrote it: the row alone (the change feed came later).
    await store.db.execute(account_rows.UPSERT, account_rows.to_row(before, store._box))
    await store.close()
    with sqlite3.connect(data / "codexlb.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'api_keys'").fetchone() is None
    monkeypatch.undo()

    store = await Store.open(data)
    try:
        after = (await Roster.load(store)).all()
        assert [(a.id, a.alias, a.tokens) for a in after] == [(before.id, before.alias, before.tokens)]
        assert await store.list_api_keys() == []
    finally:
        await store.close()
    with sqlite3.connect(data / "codexlb.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db_module.SCHEMA_VERSION
        columns = [row[1] for row in conn.execute("PRAGMA table_info(api_keys)")]
        assert "ttfb_ms" in [row[1] for row in conn.execute("PRAGMA table_info(usage)")]
    assert columns == ["id", "name", "prefix", "hash", "created_at", "last_used_at", "revoked_at", "max_concurrency",
                       "rpm", "tokens_5h", "tokens_day", "tokens_week", "models", "expires_at", "note"]
    assert len(list(data.glob("codexlb.db.v1-*.bak"))) == 1


@pytest.mark.sqlite_only
async def test_newer_schema_is_refused(tmp_path):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    await (await Store.open(data)).close()
    with sqlite3.connect(data / "codexlb.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(DatabaseError, match="newer than this codexlb"):
        await Store.open(data)


async def test_usage_records_flush_in_batches(store):
    for i in range(3):
        store.record_usage(UsageRecord(ts=time.time(), account_id="a", api_key_id=None, route="/r", model="m",
                                       status=200, error_code=None, input_tokens=i))
    assert await store.usage_rows() == []
    await store.flush_usage()
    assert [row[8] for row in await store.usage_rows()] == [0, 1, 2]


@pytest.mark.sqlite_only
async def test_a_flush_is_one_transaction(store):
    """Autocommit would make each record a commit of its own: ~25 µs a row instead of ~3 on the db thread."""
    statements: list[str] = []
    await store.db.call(lambda conn: conn.set_trace_callback(statements.append))
    for i in range(50):
        store.record_usage(UsageRecord(ts=time.time(), account_id="a", api_key_id=None, route="/r", model="m",
                                       status=200, error_code=None, input_tokens=i))
    await store.flush_usage()
    await store.db.call(lambda conn: conn.set_trace_callback(None))
    assert [s for s in statements if not s.startswith("INSERT")] == ["BEGIN", "COMMIT"]
    assert len(await store.usage_rows()) == 50


KILL_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
from codexlb.auth.authjson import read
from codexlb.pool.roster import Roster
from codexlb.store import Store

async def main():
    store = await Store.open(Path(sys.argv[1]), database_url=os.environ.get("CODEXLB_DATABASE_URL", ""))
    roster = await Roster.load(store)
    for path in sys.argv[2:]:
        await roster.add_login(read(Path(path)))
    print("imported", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_kill_9_after_import_loses_no_account(tmp_path):
    import orjson

    from codexlb.sim.backend import Backend, SimConfig

    backend = Backend(SimConfig(accounts=2))
    paths = []
    for account in backend.accounts:
        path = tmp_path / f"{account.account_id}.json"
        path.write_bytes(orjson.dumps(account.auth_json()))
        paths.append(str(path))
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(data), *paths], stdout=subprocess.PIPE, text=True)
    try:
        assert any(line.strip() == "imported" for line in proc.stdout)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    listed = subprocess.run([sys.executable, "-m", "codexlb", "accounts", "list", "--json", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=60,
                            env=child_env())
    ids = [a["id"] for a in orjson.loads(listed.stdout)["accounts"]]
    assert ids == [a.account_id for a in backend.accounts]


async def test_usage_figures_are_written_by_the_flush_not_per_answer(tmp_path, sim):
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    store = await Store.open(data)
    roster = await Roster.load(store)
    account, _ = await roster.add_login(login_of(sim.backend.accounts[0]))
    figures = {"primary": Window(30.0, 300, time.time() + 900)}
    roster.note_windows(account, figures, time.time())
    assert (await store.load_accounts())[0].primary is None
    assert roster.flush_dirty() == 1 and roster.flush_dirty() == 0
    assert (await store.load_accounts())[0].primary == figures["primary"]
    await store.close()
