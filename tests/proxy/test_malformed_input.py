"""Malformed client input on every POST proxy route: a 400 naming what is wrong, never a 500 or a
retriable 502, and nothing sent upstream."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest

from tests.simclient import body, user

RESPONSES_ROUTES = [
    ("/backend-api/codex/responses", {}),
    ("/backend-api/codex/responses", {"session_id": "s-bridged"}),  # the HTTP bridge's way
    ("/v1/responses", {}),
    ("/v1/responses/compact", {}),
    ("/backend-api/codex/responses/compact", {}),
]
CHAT = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}


def sealed(**fields):
    return {"type": "reasoning", "encrypted_content": "x", **fields}


def deeply_nested(payload, depth: int = 300) -> bytes:
    """`payload` as JSON with its "DEEP" value replaced by arrays nested `depth` deep (orjson writes 254)."""
    return orjson.dumps(payload).replace(b'"DEEP"', b"[" * depth + b"]" * depth)


# A body, and the param the 400 names.
MALFORMED_RESPONSES = [
    (body(sealed(id=[])), "input[0].id"),
    (body(sealed(id={})), "input[0].id"),
    (body(sealed(id=5)), "input[0].id"),
    (body(sealed(encrypted_content=["x"])), "input[0].encrypted_content"),
    (body({"type": 5}), "input[0].type"),
    (body({"type": "message", "role": ["user"], "content": "hi"}), "input[0].role"),
    (body({"type": "function_call_output", "call_id": {"a": 1}, "output": "x"}), "input[0].call_id"),
    (body({"type": "message", "role": "user", "content": 5}), "input[0].content"),
    (body({"type": "message", "role": "user", "content": ["hi"]}), "input[0].content[0]"),
    (body({"type": "message", "role": "user", "content": [{"type": []}]}), "input[0].content[0].type"),
    (body(user("hi"), tools=[5]), "tools[0]"),
    (body(user("hi"), tools=[{"type": {}}]), "tools[0].type"),
    (body(user("hi"), include=[1]), "include[0]"),
    (body(user("hi"), prompt_cache_key=["k"]), "prompt_cache_key"),
    (body(user("hi"), store="no"), "store"),
    (body(user("hi"), previous_response_id=5), "previous_response_id"),
]


async def post(http, url, data, headers=None):
    async with http.post(url, data=data, headers={"Content-Type": "application/json", **(headers or {})}) as resp:
        return resp.status, await resp.json() if resp.content_type == "application/json" else await resp.read()


@pytest.mark.parametrize(("route", "headers"), RESPONSES_ROUTES)
async def test_an_item_field_of_the_wrong_type_is_a_400_naming_it(proxy, http, route, headers):
    for payload, param in MALFORMED_RESPONSES:
        status, answer = await post(http, proxy.url + route, orjson.dumps(payload), headers)
        error = answer["error"]
        assert (status, error["type"], error["code"], error["param"]) == (
            400, "invalid_request_error", "invalid_type", param), payload
    assert not proxy.sim.backend.records


@pytest.mark.parametrize("anchor", ["\u0000", "", " ", "resp_1 2", "resp_1\n", "resp_\u200b1", "r" * 257])
@pytest.mark.parametrize(("route", "headers"), RESPONSES_ROUTES)
async def test_a_malformed_previous_response_id_is_a_400_not_a_retry(proxy, http, route, headers, anchor):
    status, answer = await post(http, proxy.url + route, orjson.dumps(body(user("hi"), previous_response_id=anchor)),
                                headers)
    error = answer["error"]
    assert (status, error["code"], error["param"]) == (400, "invalid_value", "previous_response_id")
    assert not proxy.sim.backend.records


async def test_a_well_formed_unknown_previous_response_id_stays_retriable(proxy, http):
    for anchor in ("resp_" + "f" * 251, "any-printable.id:ü"):
        status, answer = await post(http, f"{proxy.url}/v1/responses",
                                    orjson.dumps(body(user("hi"), previous_response_id=anchor)))
        assert (status, answer["error"]["code"]) == (502, "upstream_unavailable")


@pytest.mark.parametrize(("route", "headers"), [*RESPONSES_ROUTES, ("/v1/chat/completions", {})])
async def test_json_nested_deeper_than_can_be_sent_on_is_a_400(proxy, http, route, headers):
    if "chat" in route:
        deep = deeply_nested({**CHAT, "tools": [{"type": "function", "function": {"name": "f",
                                                                                   "parameters": {"x": "DEEP"}}}]})
    else:
        deep = deeply_nested(body(user("hi"), text={"format": "DEEP"}))
    status, answer = await post(http, proxy.url + route, deep, headers)
    assert (status, answer["error"]["code"]) == (400, "invalid_json")
    assert not proxy.sim.backend.records


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("route", ["/backend-api/codex/responses", "/v1/responses", "/v1/chat/completions",
                                   "/v1/responses/compact", "/backend-api/codex/responses/compact", "/api/keys"])
async def test_a_body_not_encoded_as_it_says_is_a_400(proxy, http, route, encoding):
    payload = CHAT if "chat" in route else body(user("hi"))
    status, answer = await post(http, proxy.url + route, orjson.dumps(payload), {"Content-Encoding": encoding})
    error = answer["error"]
    assert (status, error["type"], error["code"]) == (400, "invalid_request_error", "invalid_body")
    assert not proxy.sim.backend.records


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_body_encoded_as_it_says_is_read(proxy, http, encoding, compress):
    status, _ = await post(http, f"{proxy.url}/v1/responses", compress(orjson.dumps(body(user("hi")))),
                           {"Content-Encoding": encoding})
    assert status == 200
