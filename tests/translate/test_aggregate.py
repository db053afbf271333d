"""A Responses event stream → the final Response object (`/v1/responses` with `stream: false`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from openai.types.responses import Response

from codexlb.translate.responses_aggregate import UpstreamFailed, aggregate_response
from tests.translate.events import MODEL, USAGE, Stream, build, user


def validated(result: dict[str, Any]) -> Response:
    return Response.model_validate(result)


def with_cache_writes(usage: dict[str, Any]) -> dict[str, Any]:
    return {**usage, "input_tokens_details": {**usage["input_tokens_details"], "cache_write_tokens": 0}}


def test_text_response_is_the_completed_response():
    answer = build("Tell me about load balancers")
    completed = answer.events[-1]["response"]
    result = aggregate_response(answer.events)
    # Upstream's object, untouched but for the usage figure the Response schema requires and upstream omits.
    assert {k: result[k] for k in completed if k != "usage"} == {k: v for k, v in completed.items() if k != "usage"}
    assert result["output"] == answer.output
    assert result["usage"] == with_cache_writes(answer.usage)
    parsed = validated(result)
    assert parsed.id == answer.response_id and parsed.status == "completed"
    assert parsed.output_text == answer.output[0]["content"][0]["text"]
    assert parsed.usage is not None and parsed.usage.total_tokens == answer.usage["total_tokens"]
    assert parsed.usage.input_tokens_details.cached_tokens == answer.usage["input_tokens_details"]["cached_tokens"]


def test_events_are_not_modified():
    answer = build("hi")
    before = copy.deepcopy(answer.events)
    aggregate_response(answer.events, {"tools": []})
    assert answer.events == before


def test_function_call_and_reasoning():
    answer = build('call:exec_command {"cmd": "ls"}', include_reasoning=True)
    result = aggregate_response(answer.events)
    parsed = validated(result)
    assert [item.type for item in parsed.output] == ["reasoning", "function_call"]
    call = parsed.output[1]
    assert call.name == "exec_command" and call.arguments == '{"cmd": "ls"}' and call.call_id.startswith("call_")
    assert result["output"][0]["encrypted_content"].startswith("simenc1:")


def test_required_response_fields_come_from_the_request_or_api_defaults():
    answer = build("hi")
    bare = aggregate_response(answer.events)
    assert (bare["object"], bare["tools"], bare["tool_choice"], bare["parallel_tool_calls"]) == (
        "response", [], "auto", True)
    assert bare["error"] is None and bare["incomplete_details"] is None
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}, "strict": False}]
    request = {"model": MODEL, "input": [user("hi")], "tools": tools, "tool_choice": "required",
               "parallel_tool_calls": False, "stream": True, "store": False}
    result = aggregate_response(answer.events, request)
    assert (result["tools"], result["tool_choice"], result["parallel_tool_calls"]) == (tools, "required", False)
    validated(result)
    # Upstream's own values win over the request's.
    s = Stream().start().message("msg_1", "x")
    events = s.completed(tools=[], tool_choice="auto", parallel_tool_calls=True)
    assert aggregate_response(events, request)["tool_choice"] == "auto"


def test_output_assembled_from_item_done_events_when_completed_lacks_it():
    s = Stream().start()
    s.call_added("fc_1", "call_1", "search", 1)
    s.message("msg_0", "Looking ", "it up.", index=0)  # done events out of output order
    s.call_done("fc_1", "call_1", "search", 1, '{"q":"x"}')
    events = s.completed(output=[])
    result = aggregate_response(events)
    assert [item["id"] for item in result["output"]] == ["msg_0", "fc_1"]
    parsed = validated(result)
    assert parsed.output_text == "Looking it up."
    del events[-1]["response"]["output"]
    assert [item["id"] for item in aggregate_response(events)["output"]] == ["msg_0", "fc_1"]


def test_terminal_missing_identity_fields_takes_them_from_created():
    s = Stream(response_id="resp_x", created_at=1234).start().message("msg", "hi")
    events = s.completed()
    for key in ("id", "created_at", "model", "object", "status"):
        events[-1]["response"].pop(key)
    result = aggregate_response(events)
    assert (result["id"], result["created_at"], result["model"], result["status"]) == (
        "resp_x", 1234, MODEL, "completed")
    validated(result)


def test_completed_without_any_output_is_an_empty_answer():
    s = Stream().start()
    result = aggregate_response(s.completed(output=[]))
    assert result["output"] == [] and validated(result).output_text == ""


@pytest.mark.parametrize("reason", ["max_output_tokens", "content_filter"])
def test_incomplete_is_an_answer(reason):
    s = Stream().start().message("msg_1", "Partial")
    result = aggregate_response(s.incomplete(reason))
    parsed = validated(result)
    assert parsed.status == "incomplete" and parsed.incomplete_details.reason == reason
    assert parsed.output_text == "Partial" and result["usage"] == with_cache_writes(USAGE)


@pytest.mark.parametrize(("usage", "expected"), [
    (None, None),
    ("x", None),
    ({}, {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
          "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
          "output_tokens_details": {"reasoning_tokens": 0}}),
    ({"input_tokens": 10, "output_tokens": 5, "input_tokens_details": None},
     {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
      "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
      "output_tokens_details": {"reasoning_tokens": 0}}),
    ({**USAGE, "input_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 3}},
     {**USAGE, "input_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 3}}),
])
def test_usage_is_completed_to_the_schema(usage, expected):
    s = Stream().start().message("msg", "x")
    s.completed()
    s.events[-1]["response"]["usage"] = usage
    result = aggregate_response(s.events)
    assert result["usage"] == expected
    validated(result)


def test_incomplete_event_without_status():
    s = Stream().start()
    s.emit("response.incomplete", response={"id": "resp_hand", "incomplete_details": {"reason": "max_output_tokens"}})
    result = aggregate_response(s.events)
    assert result["status"] == "incomplete"
    validated(result)


def test_failed_raises_with_upstream_code():
    s = Stream().start().message("msg_1", "Half", done=False)
    with pytest.raises(UpstreamFailed) as info:
        aggregate_response(s.failed("context_length_exceeded", "Your input exceeds the context window."))
    assert (info.value.code, info.value.message) == ("context_length_exceeded",
                                                     "Your input exceeds the context window.")


@pytest.mark.parametrize(("event", "code"), [
    ({"type": "error", "code": "server_is_overloaded", "message": "Busy.", "param": None}, "server_is_overloaded"),
    ({"type": "error", "status": 429, "error": {"type": "usage_limit_reached", "code": "usage_limit_reached",
                                               "message": "Limit."}}, "usage_limit_reached"),
    ({"type": "response.failed"}, "server_error"),
])
def test_error_events_raise(event, code):
    events = Stream().start().events + [event]
    with pytest.raises(UpstreamFailed) as info:
        aggregate_response(events)
    assert info.value.code == code


@pytest.mark.parametrize("cut", [0, 1, 2, 5, -1])
def test_no_terminal_is_stream_incomplete(cut):
    answer = build("one two three")
    events = answer.events[:cut] if cut >= 0 else answer.events[:-1]
    with pytest.raises(UpstreamFailed) as info:
        aggregate_response(events)
    assert info.value.code == "stream_incomplete"


def test_stops_at_the_terminal_and_skips_junk():
    answer = build("hi")
    events: list[Any] = [None, "x", {"type": None}, *answer.events,
                         {"type": "error", "code": "late", "message": "after the end"}]
    assert aggregate_response(events)["id"] == answer.response_id
    assert aggregate_response(iter(answer.events))["id"] == answer.response_id  # any iterable
    garbage_terminal = [{"type": "response.completed", "response": "x"}]
    assert aggregate_response(garbage_terminal)["output"] == []


def test_prewarm_response_has_no_output():
    payload = {"model": MODEL, "stream": True, "store": False, "generate": False, "input": []}
    from codexlb.sim import responses

    answer = responses.build(payload, [], account_id="a", context_tokens=10, cached_tokens=0, reply_words=0)
    result = aggregate_response(answer.events)
    assert result["output"] == [] and validated(result).status == "completed"


# ============================================================================ integration with the sim


async def test_real_sim_stream_aggregates_to_a_valid_response(sim, http):
    from tests.simclient import body, post_responses

    request = body(user("Tell me about load balancers"), include=["reasoning.encrypted_content"],
                   tools=[{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}},
                           "strict": False}])
    resp, events = await post_responses(http, sim, request)
    assert resp.status == 200, events
    parsed = validated(aggregate_response(events, request))
    assert parsed.status == "completed" and parsed.id == events[0]["response"]["id"]
    assert parsed.output_text == "Hello from the codexlb simulator. You said: Tell me about load balancers"
    assert [item.type for item in parsed.output] == ["reasoning", "message"]
    assert parsed.tools[0].name == "f"
    assert parsed.usage is not None and parsed.usage.input_tokens > 0 and parsed.usage.output_tokens > 0

    resp, events = await post_responses(http, sim, body(user('call:read_file {"path": "a.txt"}')))
    call = validated(aggregate_response(events)).output[0]
    assert (call.type, call.name, call.arguments) == ("function_call", "read_file", '{"path": "a.txt"}')


async def test_real_sim_failures_raise(sim, http):
    from codexlb.sim.faults import Fault
    from tests.simclient import body, post_responses

    sim.backend.faults.add(Fault(action="failed", code="server_error", message="boom", after_events=3))
    _, events = await post_responses(http, sim, body(user("hi")))
    with pytest.raises(UpstreamFailed) as info:
        aggregate_response(events)
    assert (info.value.code, info.value.message) == ("server_error", "boom")

    sim.backend.faults.add(Fault(action="end_without_terminal", after_events=4))
    _, events = await post_responses(http, sim, body(user("hi")))
    assert events and events[-1]["type"] != "response.completed"
    with pytest.raises(UpstreamFailed) as info:
        aggregate_response(events)
    assert info.value.code == "stream_incomplete"
