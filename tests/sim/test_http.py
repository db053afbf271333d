"""The sim's Responses API over HTTP/SSE, its other routes, and its 400s for bad input."""

from __future__ import annotations

import json

import orjson
import pytest

from tests.simclient import auth_headers, body, post_responses, user

TEXT_SEQUENCE = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
]
TEXT_TAIL = [
    "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
]


async def test_text_response_has_the_upstream_event_sequence(sim, http):
    resp, events = await post_responses(http, sim, body(user("hello there")))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    kinds = [e["type"] for e in events]
    assert kinds[:4] == TEXT_SEQUENCE and kinds[-4:] == TEXT_TAIL
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) == len(kinds) - 8 and len(deltas) > 3
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = events[-4]
    assert done["text"] == "".join(deltas) and "You said: hello there" in done["text"]
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["id"] == events[0]["response"]["id"] and completed["id"].startswith("resp_")
    assert completed["output"][0]["content"][0]["text"] == done["text"]
    usage = completed["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert usage["input_tokens_details"]["cached_tokens"] == 0


async def test_function_call_trigger(sim, http):
    _, events = await post_responses(http, sim, body(user('please call:exec_command {"cmd": "echo hi"}')))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]
    item = events[-1]["response"]["output"][0]
    assert item["type"] == "function_call" and item["name"] == "exec_command"
    assert json.loads(item["arguments"]) == {"cmd": "echo hi"}
    assert item["call_id"].startswith("call_")

    follow_up = body(user("x"), {"type": "function_call_output", "call_id": item["call_id"], "output": "hi\n"})
    _, events = await post_responses(http, sim, follow_up)
    assert events[-1]["response"]["output"][0]["type"] == "message"
    assert "The tool returned 3 characters." in events[-1]["response"]["output"][0]["content"][0]["text"]


async def test_reasoning_item_when_encrypted_content_is_included(sim, http):
    _, events = await post_responses(http, sim, body(user("hi"), include=["reasoning.encrypted_content"]))
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["reasoning", "message"]
    assert output[0]["encrypted_content"]
    assert events[-1]["response"]["usage"]["output_tokens_details"]["reasoning_tokens"] > 0


async def test_encrypted_content_is_bound_to_its_account(sim, http):
    _, events = await post_responses(http, sim, body(user("hi"), include=["reasoning.encrypted_content"]))
    history = [user("hi"), *events[-1]["response"]["output"], user("more")]
    same, _ = await post_responses(http, sim, body(*history), number=1)
    assert same.status == 200
    other, error = await post_responses(http, sim, body(*history), number=2)
    assert other.status == 400
    assert error["error"]["code"] == "invalid_encrypted_content"
    assert error["error"]["param"] == "input[1].encrypted_content"


async def test_rate_limit_headers_and_usage_growth(sim, http):
    resp, _ = await post_responses(http, sim, body(user("a" * 40_000)))
    for window in ("primary", "secondary"):
        for suffix in ("used-percent", "window-minutes", "reset-at", "reset-after-seconds"):
            assert f"x-codex-{window}-{suffix}" in resp.headers
    assert resp.headers["x-codex-primary-window-minutes"] == "300"
    assert resp.headers["x-codex-secondary-window-minutes"] == "10080"
    assert resp.headers["x-codex-credits-has-credits"] == "False"
    account = sim.backend.accounts[0]
    used = account.primary.used_tokens
    assert used > 10_000
    await post_responses(http, sim, body(user("b" * 40_000)))
    assert account.primary.used_tokens > used + 10_000
    assert sim.backend.accounts[1].primary.used_tokens == 0


async def test_exhausted_account_gets_usage_limit_reached(sim, http):
    sim.backend.accounts[0].primary.used_tokens = sim.backend.accounts[0].primary.limit_tokens
    resp, error = await post_responses(http, sim, body(user("hi")))
    assert resp.status == 429
    assert error["error"]["type"] == "usage_limit_reached"
    assert error["error"]["code"] == "usage_limit_reached"
    assert 0 < error["error"]["resets_in_seconds"] <= 300 * 60
    assert error["error"]["resets_at"] > 1_700_000_000
    assert resp.headers["x-codex-primary-used-percent"] == "100.0"
    other, _ = await post_responses(http, sim, body(user("hi")), number=2)
    assert other.status == 200


async def test_turn_state_is_issued_and_echoed(sim, http):
    first, _ = await post_responses(http, sim, body(user("hi")))
    state = first.headers["x-codex-turn-state"]
    assert state.startswith("ts_")
    again, _ = await post_responses(http, sim, body(user("hi")), headers={"x-codex-turn-state": state})
    assert again.headers["x-codex-turn-state"] == state


async def test_http_continuation_needs_the_turn_state(sim, http):
    first, events = await post_responses(http, sim, body(user("hi")))
    anchor = events[-1]["response"]["id"]
    cold, error = await post_responses(http, sim, body(user("more"), previous_response_id=anchor))
    assert cold.status == 400 and error["error"]["code"] == "previous_response_not_found"
    warm, events = await post_responses(http, sim, body(user("more"), previous_response_id=anchor),
                                        headers={"x-codex-turn-state": first.headers["x-codex-turn-state"]})
    assert warm.status == 200 and events[-1]["response"]["previous_response_id"] == anchor


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_type", None),
        ({"stream": True, "input": []}, 400, "missing_required_parameter", "model"),
        ({"model": 5, "stream": True}, 400, "invalid_type", "model"),
        ({"model": "gpt-5.5", "stream": True, "input": 7}, 400, "invalid_type", "input"),
        ({"model": "gpt-5.5", "stream": True, "input": [5]}, 400, "invalid_type", "input[0]"),
        ({"model": "gpt-5.5", "stream": True, "input": [], "tools": {}}, 400, "invalid_type", "tools"),
        ({"model": "gpt-5.5", "stream": "yes"}, 400, "invalid_type", "stream"),
        ({"model": "gpt-5.5", "stream": True, "previous_response_id": 3}, 400, "invalid_type",
         "previous_response_id"),
        ({"model": "gpt-5.5", "stream": False, "input": []}, 400, "invalid_value", "stream"),
        ({"model": "gpt-5.5", "input": []}, 400, "invalid_value", "stream"),
        ({"model": "gpt-5.5", "stream": True, "store": True, "input": []}, 400, "invalid_value", "store"),
        ({"model": "gpt-9-imaginary", "stream": True, "input": []}, 400, "model_not_supported", "model"),
    ],
)
async def test_bad_input_gets_openai_shaped_400(sim, http, payload, status, code, param):
    resp, error = await post_responses(http, sim, payload)
    assert resp.status == status
    assert set(error["error"]) >= {"message", "type", "code", "param"}
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == code and error["error"]["param"] == param


async def test_store_false_messages_match_upstream(sim, http):
    _, error = await post_responses(http, sim, {"model": "gpt-5.5", "stream": True, "store": True, "input": []})
    assert error["error"]["message"] == "Store must be set to false"
    _, error = await post_responses(http, sim, {"model": "gpt-5.5", "stream": False, "input": []})
    assert error["error"]["message"] == "Stream must be set to true"


async def test_string_input_is_one_user_message(sim, http):
    _, events = await post_responses(http, sim, body() | {"input": "plain words"})
    assert "You said: plain words" in events[-1]["response"]["output"][0]["content"][0]["text"]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Authorization": "Bearer nope"}, 401, "token_invalidated"),
        ({}, 401, "token_invalidated"),
    ],
)
async def test_bad_tokens_get_401(sim, http, headers, status, code):
    async with http.post(f"{sim.codex_base_url}/responses", json=body(user("hi")), headers=headers) as resp:
        assert resp.status == status
        error = await resp.json()
    assert error["error"]["code"] == code and error["error"]["type"] == "authentication_error"


async def test_expired_token_and_account_mismatch(sim, http):
    headers = auth_headers(sim, 1)
    mismatch = {**headers, "chatgpt-account-id": sim.backend.accounts[1].account_id}
    async with http.post(f"{sim.codex_base_url}/responses", json=body(user("hi")), headers=mismatch) as resp:
        assert resp.status == 403
    account = sim.backend.accounts[0]
    account.valid_access[account.access_token] = 0
    async with http.post(f"{sim.codex_base_url}/responses", json=body(user("hi")), headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "token_expired"


async def test_models_catalog(sim, http):
    async with http.get(f"{sim.codex_base_url}/models?client_version=0.169.0", headers=auth_headers(sim)) as resp:
        assert resp.status == 200
        catalog = await resp.json()
    slugs = [m["slug"] for m in catalog["models"]]
    assert "gpt-5.5" in slugs and "gpt-5.1-codex" in slugs
    assert all(m["display_name"] and m["context_window"] > 0 for m in catalog["models"])
    async with http.get(f"{sim.codex_base_url}/models") as resp:
        assert resp.status == 401


async def test_wham_usage_windows(sim, http):
    await post_responses(http, sim, body(user("z" * 20_000)), number=2)
    async with http.get(f"{sim.upstream_base_url}/wham/usage", headers=auth_headers(sim, 2)) as resp:
        assert resp.status == 200
        usage = await resp.json()
    limits = usage["rate_limit"]
    assert usage["plan_type"] == sim.backend.accounts[1].plan
    assert limits["primary_window"]["limit_window_seconds"] == 300 * 60
    assert limits["secondary_window"]["limit_window_seconds"] == 10080 * 60
    assert limits["primary_window"]["used_percent"] > 0
    assert limits["allowed"] is True and limits["limit_reached"] is False


async def test_refresh_rotates_tokens_and_rejects_reuse(sim, http):
    account = sim.backend.accounts[0]
    old_refresh, old_access = account.refresh_token, account.access_token
    grant = {"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token",
             "refresh_token": old_refresh, "scope": "openid profile email"}
    async with http.post(f"{sim.url}/oauth/token", json=grant) as resp:
        assert resp.status == 200
        tokens = await resp.json()
    assert tokens["refresh_token"] != old_refresh and tokens["access_token"] != old_access
    assert tokens["id_token"] and tokens["expires_in"] > 0
    # The new access token works; the old one keeps working until it expires, as upstream's do.
    for token in (tokens["access_token"], old_access):
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{sim.codex_base_url}/responses", json=body(user("hi")), headers=headers) as resp:
            assert resp.status == 200
    async with http.post(f"{sim.url}/oauth/token", json=grant) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "refresh_token_reused"
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    async with http.post(f"{sim.url}/oauth/token", data=form) as resp:
        assert resp.status == 200
    async with http.get(f"{sim.url}/__sim/accounts") as resp:
        counts = (await resp.json())["accounts"][0]
    assert (counts["refreshes"], counts["reused"]) == (2, 1)
    async with http.post(f"{sim.url}/oauth/token", json={"grant_type": "password"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "unsupported_grant_type"


async def test_records_measure_input(sim, http):
    items = [user("one"), user("two")]
    await post_responses(http, sim, body(*items))
    record = sim.backend.records[-1]
    assert record.n_input == 2
    assert record.input_bytes == len(orjson.dumps(items))
    assert record.transport == "http" and record.outcome == "completed"


async def test_unknown_sim_route_is_openai_shaped_404(sim, http):
    async with http.get(f"{sim.url}/backend-api/nothing") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_continuity_of_a_conversation_is_checked(sim, http):
    """The sim says whether each request went on from its conversation's last answer, so end-to-end
    tests can prove nothing was lost on the way (reasoning one account sealed may be left behind)."""
    key = {"prompt_cache_key": "conv"}
    _, first = await post_responses(http, sim, body(user("a"), **key))
    output = first[-1]["response"]["output"]
    await post_responses(http, sim, body(user("a"), *output, user("b"), **key))
    await post_responses(http, sim, body(user("a, edited"), *output, user("b"), user("c"), **key))
    assert [r["continuity"] for r in sim.backend.records_view()] == ["new", "extends", "diverged"]
