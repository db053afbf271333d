"""The admin API and the dashboard, fed generated calls: every route with odd path parameters, queries,
bodies (near-valid and junk) and credentials (the local admin token mostly, else none, junk, a forged
session or a browser's cross-site marks). See `tests.fuzz.harness` for what each answer must be."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import strategies as s
from tests.fuzz.harness import Stack, check_answer, fuzz_settings

segments = s.texts.map(lambda text: quote(text, safe=""))
numbers = st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(
    ("", "0", "-1", "1e3", "0x10", " 5", "١٢", "NaN", "500", "501", "4611686018427387904")), s.texts)


def query(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    pairs = st.lists(st.tuples(st.sampled_from(names) | s.texts, numbers), max_size=4)
    return pairs.map(lambda ps: ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in ps)) if ps else "")


def admin_headers(stack: Stack) -> st.SearchStrategy[dict[str, str]]:
    credentials = s.weighted(
        (4, st.just(stack.admin)), (1, st.just({})), (1, st.fixed_dictionaries({"Authorization": s.header_values})),
        (1, st.fixed_dictionaries({"Cookie": s.header_values.map(lambda v: f"codexlb_session={v}")})))
    others = st.fixed_dictionaries({}, optional={name: s.header_values for name in (
        "X-CSRF-Token", "Origin", "Sec-Fetch-Site", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "Host",
        "Content-Type", "Accept")})
    return st.builds(lambda c, o: {**o, **c}, credentials, others)


def auth_json(stack: Stack) -> st.SearchStrategy[dict[str, Any]]:
    """The spare sim account's auth.json with its fields mutated (and an alias, now and then)."""
    real = orjson.loads(stack.spare_auth.read_bytes())
    tokens = st.fixed_dictionaries({k: s.field(st.just(v)) for k, v in real["tokens"].items()})
    return s.sometimes_without(st.fixed_dictionaries(
        {k: s.field(tokens if k == "tokens" else st.just(v)) for k, v in real.items()},
        optional={"alias": s.field(s.texts)}))


@st.composite
def calls(draw: st.DrawFn, stack: Stack, aliases: tuple[str, ...]) -> tuple[str, str, bytes | None]:
    """(method, path with its query, body) for one admin call."""
    mine = st.sampled_from(aliases) | segments  # pause and resume the real accounts too; remove never
    keys = st.fixed_dictionaries({}, optional={"name": s.field(s.texts), "max_concurrency": s.field(st.integers(1, 64))})
    password = st.fixed_dictionaries({}, optional={"password": s.field(s.texts | st.just("correct horse battery"))})
    kind = draw(st.sampled_from(range(14)))
    if kind == 0:
        return "GET", "/api/requests" + draw(query(("account", "key", "model", "status", "error_code", "limit",
                                                    "before"))), None
    if kind == 1:
        return "GET", "/api/usage/series" + draw(query(("by", "hours", "bucket"))), None
    if kind == 2:
        path = draw(st.sampled_from(("/api/accounts", "/api/keys", "/api/live", "/api/admission", "/api/bridge",
                                     "/metrics", "/api/session", "/api/nope", "/api/")))
        return draw(st.sampled_from(("GET", "GET", "POST", "PUT", "DELETE", "HEAD"))), path, None
    if kind == 3:
        return "POST", "/api/accounts", draw(s.bodies(auth_json(stack)))
    if kind == 4:
        return "POST", f"/api/accounts/{draw(mine)}/{draw(st.sampled_from(('pause', 'resume', 'nope')))}", None
    if kind == 5:
        return "DELETE", f"/api/accounts/{draw(segments)}", None
    if kind == 6:
        return "POST", "/api/accounts/device", draw(st.none() | s.junk_bodies)
    if kind == 7:
        return "GET", f"/api/accounts/device/{draw(segments | s.ids('dev'))}", None
    if kind == 8:
        return "POST", "/api/keys", draw(s.bodies(keys))
    if kind == 9:
        return "DELETE", f"/api/keys/{draw(segments | s.ids('key'))}", None
    if kind == 10:
        return "POST", draw(st.sampled_from(("/api/login", "/api/logout"))), draw(s.bodies(password))
    if kind == 11:
        return "POST", "/api/admin/password", draw(s.bodies(password))
    if kind == 12:
        name = draw(st.sampled_from(("index.html", "app.js", "style.css", "", "../__init__.py", "%2e%2e/x", "a" * 5000))
                    | segments)
        method = draw(st.sampled_from(("GET", "HEAD", "POST")))
        # A HEAD's head stays readable (see strategies.client_headers): no long query after a long name.
        return method, f"/dashboard/{name}" + ("" if method == "HEAD" else draw(query(("v",)))), None
    return "GET", "/" + draw(st.sampled_from(("", "index.html", "dashboard", "api")) | segments), None


def test_admin_api_and_dashboard(stack):
    since = stack.log.mark()
    listed = stack.send("GET", "/api/accounts", stack.admin).json()["accounts"]
    aliases = tuple(a["alias"] for a in listed)

    @fuzz_settings(1000)
    @given(call=calls(stack, aliases), headers=admin_headers(stack), big=s.oversized)
    def one(call, headers, big):
        method, path, body = call
        # Not for HEAD: see strategies.client_headers.
        reply = stack.send(method, path, headers if method == "HEAD" else {**headers, **big}, body)
        check_answer(reply, body, method=method)

    one()
    for account in stack.send("GET", "/api/accounts", stack.admin).json()["accounts"]:
        if account["status"] == "paused":  # the fuzz paused it: it serves again, for the normal request
            assert stack.send("POST", f"/api/accounts/{account['alias']}/resume", stack.admin).status == 200
    stack.assert_healthy(since)
