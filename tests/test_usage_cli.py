"""`codexlb usage` as operators run it: on the data dir, and through a running server; a table or JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from codexlb.app import create_app
from codexlb.cli.usage import parse_time
from codexlb.cli.common import CliError
from codexlb.keys import KeyRing
from codexlb.services import KEYS, STORE, ensure_data_dir
from codexlb.store import Store, UsageRecord
from tests.keys.test_keys_cli import run
from tests.serving import codexlb, serving

NOW = time.time()


def row(ts: float, conversation: str | None, key_id: str | None, **over) -> UsageRecord:
    fields = dict(ts=ts, account_id="acct-a", api_key_id=key_id, route="/backend-api/codex/responses",
                  model="gpt-5.5", status=200, error_code=None, input_tokens=1000, cached_tokens=900,
                  output_tokens=20, reasoning_tokens=8, conversation=conversation, turn_id="turn-1", transport="ws",
                  client_bytes=300, client_items=1, upstream_bytes=300, upstream_items=1, recoveries=0,
                  recovery_kinds=None, recovery_bytes=0, unanchored_bytes=5300)
    return UsageRecord(**{**fields, **over})


async def seed(store: Store, key_id: str) -> None:
    for record in (row(NOW - 30, "conv-cli", key_id),
                   row(NOW - 20, "conv-cli", key_id, turn_id="turn-2", recoveries=1, recovery_kinds="rebuild",
                       recovery_bytes=4000, upstream_bytes=4300),
                   row(NOW - 3 * 86400, "conv-old", None)):
        store.record_usage(record)
    await store.flush_usage()


@pytest.fixture
def data_dir(settings):
    """A data dir (or the test's PostgreSQL database) holding a key and a conversation of two requests."""

    async def fill() -> None:
        ensure_data_dir(settings)
        store = await Store.open_for(settings)
        try:
            _, record = await (await KeyRing.load(store)).create("laptop")
            await seed(store, record.id)
        finally:
            await store.close()

    asyncio.run(fill())
    return str(settings.data_dir)


def test_the_table_per_key_and_conversation(capsys, data_dir):
    rc, out, err = run(capsys, "usage", "--data-dir", data_dir)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "REASONING", "SAVED", "RECOV"]
    assert lines[1].split() == ["laptop", "2", "2000", "1800", "40", "16", "5.9K", "1", "(+3.9K)"]
    [conv] = [line for line in lines if line.startswith("conv-")]
    assert conv.split()[:5] == ["conv-cli", "laptop", "acct-a", "2", "2"] and "conv-old" not in out
    rc, out, _ = run(capsys, "usage", "--since", "7d", "--data-dir", data_dir)
    assert "conv-old" in out


def test_json_and_filters(capsys, data_dir):
    rc, out, err = run(capsys, "usage", "--json", "--key", "laptop", "--data-dir", data_dir)
    assert rc == 0, err
    view = json.loads(out)
    assert view["until"] - view["since"] == pytest.approx(86400, abs=5)
    assert [(k["api_key_name"], k["requests"], k["saved_bytes"]) for k in view["keys"]] == [("laptop", 2, 6000)]
    [conv] = view["conversations"]
    assert (conv["conversation"], conv["turns"], conv["recovery_bytes"]) == ("conv-cli", 2, 4000)
    rc, out, err = run(capsys, "usage", "--json", "--since", "2020-01-01", "--until", "2020-01-02",
                       "--data-dir", data_dir)
    assert json.loads(out)["conversations"] == [] and json.loads(out)["keys"] == []
    rc, _, err = run(capsys, "usage", "--key", "nobody", "--data-dir", data_dir)
    assert rc == 1 and err == "codexlb: error: no API key 'nobody' (see `codexlb keys list`)\n"
    rc, _, err = run(capsys, "usage", "--since", "yesterday", "--data-dir", data_dir)
    assert rc == 2 and "neither an ISO-8601 time nor a span" in err


def test_one_conversation_request_by_request(capsys, data_dir):
    rc, out, err = run(capsys, "usage", "--conversation", "conv-cli", "--data-dir", data_dir)
    assert rc == 0, err
    head, _, rest = out.partition("\n\n")
    assert head.startswith("conversation conv-cli: 2 turns, 2 requests, key laptop, account acct-a, saved 5.9K")
    lines = rest.splitlines()
    assert lines[0].split()[:3] == ["TIME", "TURN", "VIA"]
    assert lines[2].split()[2:5] == ["turn-2", "ws", "200"] and lines[2].endswith("rebuild (+3.9K)")
    rc, out, _ = run(capsys, "usage", "--conversation", "conv-cli", "--json", "--data-dir", data_dir)
    view = json.loads(out)
    assert [r["recovery_kinds"] for r in view["requests"]] == [None, "rebuild"]
    assert [r["saved_bytes"] for r in view["requests"]] == [5000, 1000]  # the recovery sent 4000 more upstream
    rc, _, err = run(capsys, "usage", "--conversation", "conv-nope", "--data-dir", data_dir)
    assert rc == 1 and "no request of conversation 'conv-nope'" in err


def test_times():
    assert parse_time("24h", 1000.0 + 86400) == 1000.0
    assert parse_time("1.5d", 2 * 86400) == 0.5 * 86400
    assert parse_time("2026-12-01T00:00:00Z", 0) == parse_time("2026-12-01", 0) == 1796083200.0
    assert parse_time("2026-12-01T01:00:00+01:00", 0) == 1796083200.0
    with pytest.raises(CliError):
        parse_time("-3h", 0)


async def test_through_a_running_server(settings):
    settings = dataclasses.replace(settings, data_dir=settings.data_dir, port=0)
    app = create_app(settings)
    async with serving(settings, app) as port:
        _, record = await app[KEYS].create("laptop")
        await seed(app[STORE], record.id)
        common = ("--port", port, "--data-dir", str(settings.data_dir))
        rc, out, err = await codexlb("usage", "--json", *common)
        assert rc == 0, err
        view = json.loads(out)
        assert [(k["api_key_name"], k["requests"]) for k in view["keys"]] == [("laptop", 2)]
        assert [c["conversation"] for c in view["conversations"]] == ["conv-cli"]
        rc, out, err = await codexlb("usage", "--conversation", "conv-cli", *common)
        assert rc == 0 and out.startswith("conversation conv-cli: 2 turns"), err
        rc, _, err = await codexlb("usage", "--key", "nobody", *common)
        assert rc == 1 and "No API key has the id or name 'nobody'" in err
