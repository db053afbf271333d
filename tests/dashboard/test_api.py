"""The admin API the dashboard reads: the request log with filters and paging, token series, the live
view, the session probe, and the page itself."""

from __future__ import annotations

import time

import pytest

from codexlb.services import STORE
from codexlb.store import UsageRecord
from tests.keys.conftest import keyed_app

REMOTE = {"x-test-remote": "203.0.113.7"}


def row(n: int, **over) -> UsageRecord:
    fields = dict(ts=time.time() - 100 + n, account_id="acct-a" if n % 2 else "acct-b", api_key_id=None,
                  route="/v1/responses", model="gpt-5.5", status=200, error_code=None, input_tokens=10,
                  output_tokens=5, duration_ms=3.0)
    return UsageRecord(**{**fields, **over})


@pytest.fixture
async def client(aiohttp_client, settings):
    client = await aiohttp_client(keyed_app(settings))
    store = client.app[STORE]
    for n in range(7):
        store.record_usage(row(n))
    store.record_usage(row(7, status=429, error_code="proxy_overloaded"))
    await store.flush_usage()
    return client


async def test_request_log_pages_newest_first(client):
    first = await (await client.get("/api/requests?limit=5")).json()
    assert len(first["requests"]) == 5 and first["requests"][0]["status"] == 429
    ids = [r["id"] for r in first["requests"]]
    assert ids == sorted(ids, reverse=True)
    rest = await (await client.get(f"/api/requests?limit=5&before={first['next_before']}")).json()
    assert len(rest["requests"]) == 3 and rest["next_before"] is None
    assert {r["id"] for r in rest["requests"]}.isdisjoint(ids)


async def test_request_log_filters(client):
    failed = await (await client.get("/api/requests?status=429")).json()
    assert [r["error_code"] for r in failed["requests"]] == ["proxy_overloaded"]
    by_code = await (await client.get("/api/requests?error_code=proxy_overloaded&account=acct-a")).json()
    assert len(by_code["requests"]) == 1
    assert len((await (await client.get("/api/requests?account=acct-b")).json())["requests"]) == 4


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "status=abc", "before=-1", "limit=x"])
async def test_request_log_rejects_bad_paging(client, query):
    resp = await client.get(f"/api/requests?{query}")
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_value"


async def test_token_series_by_account_and_key(client):
    series = await (await client.get("/api/usage/series?by=account&hours=1&bucket=3600")).json()
    totals = {}
    for point in series["points"]:
        totals[point["who"]] = totals.get(point["who"], 0) + point["input_tokens"]
    assert totals == {"acct-a": 40, "acct-b": 40}
    assert (await client.get("/api/usage/series?by=nobody")).status == 400


async def test_live_view_and_session_probe(client):
    live = await (await client.get("/api/live")).json()
    assert set(live) == {"in_flight", "waiting", "admitted", "rejected", "at"}
    assert await (await client.get("/api/session")).json() == {
        "authenticated": True, "csrf_token": None, "password_set": False}
    remote = await (await client.get("/api/session", headers=REMOTE)).json()
    assert remote["authenticated"] is False


@pytest.mark.parametrize("path", ["/api/requests", "/api/usage/series", "/api/live"])
async def test_read_endpoints_are_admin_only(client, path):
    resp = await client.get(path, headers=REMOTE)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "admin_forbidden"


async def test_the_page_ships_with_the_package_and_a_strict_policy(client):
    resp = await client.get("/")
    assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    assert "/dashboard/app.js" in html and "<script>" not in html  # no inline code: the policy forbids it
    for asset in ("/dashboard/app.js", "/dashboard/style.css"):
        assert (await client.get(asset)).status == 200


@pytest.mark.parametrize("path", ["/dashboard/" + "a" * 5000, "/dashboard/" + "a/" * 2000, "/dashboard/nope.js",
                                  "/dashboard/%2e%2e/__init__.py", "/dashboard/", "/dashboard/%00"])
async def test_a_path_that_names_no_dashboard_file_is_a_404(client, path):
    resp = await client.get(path)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
