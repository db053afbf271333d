"""Chat Completions ↔ Responses: request mapping, validation, streaming chunks, aggregation."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter

from codexlb.translate import chat
from codexlb.translate.chat import (DONE, DROPPED, FORWARDED, REJECTED, ChatStream, TranslationError,
                                    UpstreamFailed, aggregate_chat, chat_to_responses, chat_usage, sse_chunk)
from tests.translate.events import MODEL, USAGE, Stream, build

REQUEST_TYPE = TypeAdapter(ResponseCreateParamsStreaming)
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages) or [{"role": "user", "content": "hi"}], **extra}


def developer(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": text}]}


def user_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


# ============================================================================ request: chat_to_responses


def test_minimal_request():
    out = chat_to_responses(body({"role": "user", "content": "Hello"}))
    assert out == {"model": MODEL, "input": [user_item("Hello")], "stream": True, "store": False}
    REQUEST_TYPE.validate_python(out)


def test_input_body_is_not_modified():
    request = body({"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "u"}]},
                   tools=[TOOL], tool_choice="auto", stream=False, store=True)
    before = copy.deepcopy(request)
    chat_to_responses(request)
    assert request == before


@pytest.mark.parametrize("role", ["system", "developer"])
def test_system_and_developer_become_developer_messages_not_instructions(role):
    out = chat_to_responses(body({"role": role, "content": "Be terse."}, {"role": "user", "content": "hi"}))
    assert "instructions" not in out
    assert out["input"] == [developer("Be terse."), user_item("hi")]


def test_system_text_parts_keep_their_split():
    out = chat_to_responses(body({"role": "system", "content": [{"type": "text", "text": "one"},
                                                                 {"type": "text", "text": "two"}]}))
    assert out["input"] == [{"type": "message", "role": "developer",
                             "content": [{"type": "input_text", "text": "one"}, {"type": "input_text", "text": "two"}]}]


def test_multi_turn_tool_conversation():
    messages = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "4C "},
                                                                 {"type": "text", "text": "rain"}]},
        {"role": "assistant", "content": "Paris is sunny, Oslo is rainy."},
        {"role": "user", "content": "Thanks. And Rome?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_3", "content": "25C"},
    ]
    out = chat_to_responses(body(*messages, tools=[TOOL]))
    assert out["input"] == [
        developer("You are a weather bot."),
        user_item("Weather in Paris and Oslo?"),
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "4C rain"},
        assistant_item("Paris is sunny, Oslo is rainy."),
        user_item("Thanks. And Rome?"),
        assistant_item("Let me check."),
        {"type": "function_call", "call_id": "call_3", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_3", "output": "25C"},
    ]
    assert out["tools"] == [{"type": "function", "name": "get_weather", "description": "Weather for a city.",
                             "parameters": TOOL["function"]["parameters"], "strict": False}]


def test_assistant_variants():
    calls = [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]  # no type; arguments as an object
    out = chat_to_responses(body(
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": ""},  # empty: nothing
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}]},
        {"role": "assistant", "content": None, "tool_calls": calls, "name": "bot"},
        {"role": "tool", "tool_call_id": "c", "content": ""},
        {"role": "assistant", "tool_calls": [{"id": "d", "type": "function", "function": {"name": "g"}}]},
        {"role": "tool", "tool_call_id": "d", "content": "x"},
    ))
    assert out["input"][1:] == [
        {"type": "message", "role": "assistant",
         "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "a"}, {"type": "refusal", "refusal": "no"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c", "output": ""},
        {"type": "function_call", "call_id": "d", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "d", "output": "x"},
    ]


def test_image_and_file_parts():
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": "https://example.com/dog.png"},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "file", "file": {"file_id": "file-123"}},
    ]
    out = chat_to_responses(body({"role": "user", "content": content}))
    assert out["input"] == [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is in these?"},
        {"type": "input_image", "image_url": "https://example.com/cat.png"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
        {"type": "input_image", "image_url": "https://example.com/dog.png"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
        {"type": "input_file", "file_id": "file-123"},
    ]}]


def test_tools_mapping():
    tools = [
        TOOL,
        {"type": "function", "function": {"name": "now"}},  # no parameters: an empty object schema
        {"type": "function", "function": {"name": "strict_one", "strict": True, "parameters": {
            "type": "object", "properties": {}, "additionalProperties": False}}},
    ]
    out = chat_to_responses(body(tools=tools))
    assert out["tools"] == [
        {"type": "function", "name": "get_weather", "description": "Weather for a city.",
         "parameters": TOOL["function"]["parameters"], "strict": False},
        {"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}}, "strict": False},
        {"type": "function", "name": "strict_one", "strict": True,
         "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
    ]
    REQUEST_TYPE.validate_python(out)
    assert chat_to_responses(body(tools=[]))["tools"] == []


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"),
    ("none", "none"),
    ("required", "required"),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "name": "get_weather"}),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_weather"}}]}},
     {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}),
])
def test_tool_choice_variants(choice, expected):
    out = chat_to_responses(body(tools=[TOOL], tool_choice=choice))
    assert out["tool_choice"] == expected
    REQUEST_TYPE.validate_python(out)


def test_forwarded_fields():
    out = chat_to_responses(body(
        parallel_tool_calls=False, reasoning_effort="high", verbosity="low", prompt_cache_key="session-1",
        response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "description": "The answer.", "strict": True,
            "schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
    ))
    assert out["parallel_tool_calls"] is False
    assert out["reasoning"] == {"effort": "high"}
    assert out["prompt_cache_key"] == "session-1"
    assert out["text"] == {"verbosity": "low", "format": {
        "type": "json_schema", "name": "answer", "description": "The answer.", "strict": True,
        "schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    REQUEST_TYPE.validate_python(out)


@pytest.mark.parametrize("kind", ["text", "json_object"])
def test_simple_response_formats(kind):
    assert chat_to_responses(body(response_format={"type": kind}))["text"] == {"format": {"type": kind}}


def test_dropped_fields_and_forced_stream_store():
    out = chat_to_responses(body(
        max_tokens=100, max_completion_tokens=100, temperature=0.2, top_p=0.9, presence_penalty=0.1,
        frequency_penalty=0.1, seed=1, stop=["x"], logit_bias={"1": 2}, logprobs=True, top_logprobs=2, user="u",
        safety_identifier="s", metadata={"a": "b"}, store=True, service_tier="flex", stream=False,
        stream_options={"include_usage": True}, n=1, modalities=["text"], prediction={"type": "content"},
        web_search_options={}, some_future_field=1,
    ))
    # The Codex backend rejects max_output_tokens, and sampling knobs with it: nothing of these goes up.
    assert out == {"model": MODEL, "input": [user_item("hi")], "stream": True, "store": False}


def test_allow_list_is_complete_and_documented():
    full = body({"role": "user", "content": "hi"}, tools=[TOOL], tool_choice="auto", parallel_tool_calls=True,
                reasoning_effort="low", response_format={"type": "text"}, verbosity="medium",
                prompt_cache_key="k")
    assert set(full) == set(FORWARDED)
    out = chat_to_responses(full)
    assert set(out) == {"model", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning", "text",
                        "prompt_cache_key", "stream", "store"}
    assert not set(FORWARDED) & (DROPPED - {"stream"})
    assert set(REJECTED) - DROPPED == {"functions", "function_call", "audio"}


def _error(request: Any) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        chat_to_responses(request)
    return info.value


def _msgs(*messages: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages)}


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
BAD_REQUESTS = [
    # (request, param, code)
    ([], None, "invalid_type"),
    ("text", None, "invalid_type"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
    ({"model": None, "messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model", "invalid_type"),
    ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model", "empty_string"),
    ({"model": MODEL}, "messages", "missing_required_parameter"),
    ({"model": MODEL, "messages": "hi"}, "messages", "invalid_type"),
    ({"model": MODEL, "messages": {"role": "user"}}, "messages", "invalid_type"),
    ({"model": MODEL, "messages": []}, "messages", "empty_array"),
    (_msgs("hi"), "messages[0]", "invalid_type"),
    (_msgs(None), "messages[0]", "invalid_type"),
    (_msgs({"content": "x"}), "messages[0].role", "missing_required_parameter"),
    (_msgs({"role": 1, "content": "x"}), "messages[0].role", "invalid_type"),
    (_msgs({"role": "function", "name": "f", "content": "x"}), "messages[0].role", "invalid_value"),
    (_msgs({"role": "robot", "content": "x"}), "messages[0].role", "invalid_value"),
    (_msgs({"role": "user"}), "messages[0].content", "missing_required_parameter"),
    (_msgs({"role": "system"}), "messages[0].content", "missing_required_parameter"),
    (_msgs({"role": "user", "content": 5}), "messages[0].content", "invalid_type"),
    (_msgs({"role": "user", "content": {"type": "text"}}), "messages[0].content", "invalid_type"),
    (_msgs({"role": "user", "content": ["hi"]}), "messages[0].content[0]", "invalid_type"),
    (_msgs({"role": "user", "content": [{"text": "hi"}]}), "messages[0].content[0].type",
     "missing_required_parameter"),
    (_msgs({"role": "user", "content": [{"type": "text"}]}), "messages[0].content[0].text",
     "missing_required_parameter"),
    (_msgs({"role": "user", "content": [{"type": "text", "text": 1}]}), "messages[0].content[0].text",
     "invalid_type"),
    (_msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
     "messages[0].content[0].type", "invalid_value"),
    (_msgs({"role": "user", "content": [{"type": "image_url"}]}), "messages[0].content[0].image_url",
     "missing_required_parameter"),
    (_msgs({"role": "user", "content": [{"type": "image_url", "image_url": 3}]}),
     "messages[0].content[0].image_url", "invalid_type"),
    (_msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}),
     "messages[0].content[0].image_url.url", "missing_required_parameter"),
    (_msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": 1}}]}),
     "messages[0].content[0].image_url.detail", "invalid_type"),
    (_msgs({"role": "user", "content": [{"type": "file", "file": {"filename": "a"}}]}),
     "messages[0].content[0].file.file_data", "missing_required_parameter"),
    (_msgs({"role": "user", "content": [{"type": "file", "file": "x"}]}), "messages[0].content[0].file",
     "invalid_type"),
    (_msgs({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}),
     "messages[0].content[0].type", "invalid_value"),
    (_msgs({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}),
     "messages[0].content[0].type", "invalid_value"),
    (_msgs({"role": "assistant", "content": "x", "refusal": 3}), "messages[0].refusal", "invalid_type"),
    (_msgs({"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}),
     "messages[0].function_call", "invalid_value"),
    (_msgs({"role": "assistant", "tool_calls": {"id": "x"}}), "messages[0].tool_calls", "invalid_type"),
    (_msgs({"role": "assistant", "tool_calls": ["x"]}), "messages[0].tool_calls[0]", "invalid_type"),
    (_msgs({"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}), "messages[0].tool_calls[0].id",
     "missing_required_parameter"),
    (_msgs({"role": "assistant", "tool_calls": [{"id": "c"}]}), "messages[0].tool_calls[0].function",
     "missing_required_parameter"),
    (_msgs({"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}),
     "messages[0].tool_calls[0].function.name", "missing_required_parameter"),
    (_msgs({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": 1}}]}),
     "messages[0].tool_calls[0].function.arguments", "invalid_type"),
    (_msgs({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}),
     "messages[0].tool_calls[0].type", "invalid_value"),
    (_msgs({"role": "tool", "content": "x"}), "messages[0].tool_call_id", "missing_required_parameter"),
    (_msgs({"role": "tool", "tool_call_id": "nope", "content": "x"}), "messages[0].tool_call_id", "invalid_value"),
    (_msgs({"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "c1"}),
     "messages[1].content", "missing_required_parameter"),
    (_msgs({"role": "assistant", "tool_calls": [CALL]},
           {"role": "tool", "tool_call_id": "c1", "content": [{"type": "image_url", "image_url": "u"}]}),
     "messages[1].content[0].type", "invalid_value"),
    (body(tools={"type": "function"}), "tools", "invalid_type"),
    (body(tools=["f"]), "tools[0]", "invalid_type"),
    (body(tools=[{"function": {"name": "f"}}]), "tools[0].type", "missing_required_parameter"),
    (body(tools=[{"type": "custom", "custom": {"name": "f"}}]), "tools[0].type", "invalid_value"),
    (body(tools=[{"type": "function"}]), "tools[0].function", "missing_required_parameter"),
    (body(tools=[{"type": "function", "function": {}}]), "tools[0].function.name", "missing_required_parameter"),
    (body(tools=[{"type": "function", "function": {"name": ""}}]), "tools[0].function.name", "empty_string"),
    (body(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
     "tools[0].function.parameters", "invalid_type"),
    (body(tools=[{"type": "function", "function": {"name": "f", "strict": "yes"}}]), "tools[0].function.strict",
     "invalid_type"),
    (body(tools=[{"type": "function", "function": {"name": "f", "description": 5}}]),
     "tools[0].function.description", "invalid_type"),
    (body(tool_choice="sometimes"), "tool_choice", "invalid_value"),
    (body(tool_choice=5), "tool_choice", "invalid_type"),
    (body(tool_choice={"function": {"name": "f"}}), "tool_choice.type", "missing_required_parameter"),
    (body(tool_choice={"type": "function"}), "tool_choice.function", "missing_required_parameter"),
    (body(tool_choice={"type": "function", "function": {"name": 1}}), "tool_choice.function.name",
     "invalid_type"),
    (body(tool_choice={"type": "custom", "custom": {"name": "f"}}), "tool_choice.type", "invalid_value"),
    (body(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "none", "tools": []}}),
     "tool_choice.allowed_tools.mode", "invalid_value"),
    (body(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}),
     "tool_choice.allowed_tools.tools", "missing_required_parameter"),
    (body(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [1]}}),
     "tool_choice.allowed_tools.tools[0]", "invalid_type"),
    (body(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "mcp"}]}}),
     "tool_choice.allowed_tools.tools[0].type", "invalid_value"),
    (body(parallel_tool_calls="true"), "parallel_tool_calls", "invalid_type"),
    (body(reasoning_effort=1), "reasoning_effort", "invalid_type"),
    (body(verbosity=["low"]), "verbosity", "invalid_type"),
    (body(prompt_cache_key=1), "prompt_cache_key", "invalid_type"),
    (body(response_format="json"), "response_format", "invalid_type"),
    (body(response_format={"type": "yaml"}), "response_format.type", "invalid_value"),
    (body(response_format={"type": "json_schema"}), "response_format.json_schema", "missing_required_parameter"),
    (body(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
     "response_format.json_schema.name", "missing_required_parameter"),
    (body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
     "response_format.json_schema.schema", "missing_required_parameter"),
    (body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": 1}}),
     "response_format.json_schema.strict", "invalid_type"),
    (body(stream="yes"), "stream", "invalid_type"),
    (body(stream_options=[]), "stream_options", "invalid_type"),
    (body(stream_options={"include_usage": "true"}), "stream_options.include_usage", "invalid_type"),
    (body(n=2), "n", "invalid_value"),
    (body(n=True), "n", "invalid_type"),
    (body(n="1"), "n", "invalid_type"),
    (body(functions=[{"name": "f"}]), "functions", "unsupported_parameter"),
    (body(function_call="auto"), "function_call", "unsupported_parameter"),
    (body(audio={"voice": "alloy", "format": "wav"}), "audio", "unsupported_parameter"),
    (body(modalities=["text", "audio"]), "modalities", "invalid_value"),
    (body(modalities="text"), "modalities", "invalid_type"),
]


@pytest.mark.parametrize(("request_body", "param", "code"), BAD_REQUESTS)
def test_bad_requests(request_body, param, code):
    error = _error(request_body)
    assert (error.param, error.code) == (param, code), error.message
    assert error.message and str(error) == error.message
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error", "code": code,
                                      "param": param}}


def test_error_messages_read_like_openai():
    assert _error({"model": MODEL}).message == "Missing required parameter: 'messages'."
    assert _error(body(model=5)).message == "Invalid type for 'model': expected a string, but got an integer instead."
    assert "'messages[0].role': 'robot'" in _error(_msgs({"role": "robot", "content": "x"})).message


_JUNK = [None, True, 0, -1, 1.5, "", "x", [], [None], {}, {"type": None}, {"type": "text"}, [{}], [[]]]


def _mutations(value: Any, path: tuple = ()) -> list[tuple]:
    paths = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            paths += _mutations(inner, path + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            paths += _mutations(inner, path + (index,))
    return paths


def test_no_junk_anywhere_escapes_as_anything_but_translation_error():
    """Replace every value of a rich valid request, one at a time, with junk: a result or a TranslationError."""
    rich = body(
        {"role": "system", "content": [{"type": "text", "text": "s"}]},
        {"role": "user", "content": [{"type": "text", "text": "u"},
                                     {"type": "image_url", "image_url": {"url": "u", "detail": "low"}},
                                     {"type": "file", "file": {"file_id": "f"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}],
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
        tools=[TOOL], parallel_tool_calls=True, reasoning_effort="low", stream=True,
        tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
            {"type": "function", "function": {"name": "get_weather"}}]}},
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "strict": True}},
        stream_options={"include_usage": True},
    )
    chat_to_responses(rich)
    tried = 0
    for path in _mutations(rich):
        for junk in _JUNK:
            mutated = copy.deepcopy(rich)
            if not path:
                mutated = junk
            else:
                target = mutated
                for step in path[:-1]:
                    target = target[step]
                target[path[-1]] = junk
            tried += 1
            try:
                out = chat_to_responses(mutated)
            except TranslationError:
                continue
            orjson.dumps(out)  # whatever passes is plain JSON
    assert tried > 500


def test_random_junk_requests():
    rng = random.Random(7)
    atoms = [None, True, 3, "s", "user", "assistant", "tool", "text", "function", "image_url"]

    def junk(depth: int) -> Any:
        if depth > 3 or rng.random() < 0.3:
            return rng.choice(atoms)
        if rng.random() < 0.5:
            return [junk(depth + 1) for _ in range(rng.randint(0, 3))]
        keys = ["role", "content", "type", "text", "tool_calls", "function", "name", "id", "image_url", "url",
                "tool_call_id", "arguments", "file"]
        return {rng.choice(keys): junk(depth + 1) for _ in range(rng.randint(0, 4))}

    for _ in range(3000):
        request = {"model": rng.choice([MODEL, None, 1]), "messages": junk(0)}
        for key in ("tools", "tool_choice", "response_format", "stream_options"):
            if rng.random() < 0.3:
                request[key] = junk(1)
        try:
            chat_to_responses(request)
        except TranslationError:
            pass


# ============================================================================ streaming: ChatStream


def run(events: list[dict[str, Any]], **kwargs: Any) -> tuple[ChatStream, list[dict[str, Any]]]:
    stream = ChatStream(kwargs.pop("model", "client-model"), **kwargs)
    chunks: list[dict[str, Any]] = []
    for event in events:
        chunks += stream.feed(event)
    chunks += stream.close()
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        orjson.dumps(chunk)
    return stream, chunks


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]


def content(chunks: list[dict[str, Any]]) -> str:
    return "".join(delta.get("content") or "" for delta in deltas(chunks))


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


def test_text_stream_from_the_sim_generator():
    answer = build("Tell me about load balancers")
    created = answer.events[0]["response"]
    stream, chunks = run(answer.events)
    text = answer.output[0]["content"][0]["text"]

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert content(chunks) == text
    assert len([d for d in deltas(chunks) if d.get("content")]) == len(text.split())  # one chunk per delta
    last = chunks[-1]
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert finish_reasons(chunks) == ["stop"]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{answer.response_id}"}
    assert {c["created"] for c in chunks} == {created["created_at"]}
    assert {c["model"] for c in chunks} == {MODEL}  # upstream's name for the model
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)  # not asked for
    assert stream.finished and stream.finish_reason == "stop"
    assert stream.usage == chat_usage(answer.usage)


def test_usage_chunk_when_asked():
    answer = build("hello there", context_tokens=2000, cached_tokens=1500, include_reasoning=True)
    _, chunks = run(answer.events, include_usage=True)
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 2000, "completion_tokens": answer.usage["output_tokens"],
        "total_tokens": answer.usage["total_tokens"], "prompt_tokens_details": {"cached_tokens": 1500},
        "completion_tokens_details": {"reasoning_tokens": 8},
    }
    assert all(c["usage"] is None for c in chunks[:-1])  # as OpenAI: null on every other chunk
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # The reasoning item (with its account-bound encrypted_content) has no chat form.
    assert "simenc1" not in orjson.dumps(chunks).decode()


def test_function_call_from_the_sim_generator():
    answer = build('call:get_weather {"city": "Paris"}')
    item = answer.output[0]
    _, chunks = run(answer.events, include_usage=True)
    calls = [d["tool_calls"] for d in deltas(chunks) if "tool_calls" in d]
    assert calls[0] == [{"index": 0, "id": item["call_id"], "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]
    assert calls[1:] == [[{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]]
    assert finish_reasons(chunks) == ["tool_calls"]
    assert content(chunks) == ""
    assert chunks[-1]["usage"]["completion_tokens"] == answer.usage["output_tokens"]


def test_parallel_function_calls_with_interleaved_arguments():
    s = Stream().start()
    s.call_added("fc_a", "call_a", "get_weather", 0).call_added("fc_b", "call_b", "get_time", 1)
    s.call_delta("fc_a", 0, '{"city":').call_delta("fc_b", 1, '{"tz":').call_delta("fc_a", 0, '"Oslo"}')
    s.call_delta("fc_b", 1, '"UTC"}')
    s.call_done("fc_a", "call_a", "get_weather", 0, '{"city":"Oslo"}')
    s.call_done("fc_b", "call_b", "get_time", 1, '{"tz":"UTC"}')
    _, chunks = run(s.completed())
    result = aggregate_chat(s.events)
    assert result["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"UTC"}'}},
    ]
    indices = [call["index"] for d in deltas(chunks) for call in d.get("tool_calls", [])]
    assert indices == [0, 1, 0, 1, 0, 1]  # headers, then the deltas where they came: nothing re-sent at .done
    assert finish_reasons(chunks) == ["tool_calls"]


def test_text_then_function_call():
    s = Stream().start().message("msg_1", "Let me ", "check.")
    s.call_added("fc_1", "call_1", "lookup", 1).call_delta("fc_1", 1, "{}").call_done("fc_1", "call_1", "lookup", 1,
                                                                                      "{}")
    _, chunks = run(s.completed())
    assert content(chunks) == "Let me check."
    assert finish_reasons(chunks) == ["tool_calls"]
    message = aggregate_chat(s.events)["choices"][0]["message"]
    assert message["content"] == "Let me check." and len(message["tool_calls"]) == 1


@pytest.mark.parametrize(("reason", "expected"), [("max_output_tokens", "length"),
                                                  ("content_filter", "content_filter"), (None, "length")])
def test_incomplete_responses(reason, expected):
    s = Stream().start().message("msg_1", "Partial")
    _, chunks = run(s.incomplete(reason))
    assert content(chunks) == "Partial"
    assert finish_reasons(chunks) == [expected]


def test_completed_with_incomplete_status_is_length():
    s = Stream().start().message("msg_1", "Partial")
    _, chunks = run(s.completed(status="incomplete", incomplete_details={"reason": "max_output_tokens"}))
    assert finish_reasons(chunks) == ["length"]


def test_refusal_stream():
    s = Stream().start()
    where = {"item_id": "msg_r", "output_index": 0, "content_index": 0}
    s.emit("response.output_item.added", output_index=0,
           item={"id": "msg_r", "type": "message", "role": "assistant", "status": "in_progress", "content": []})
    s.emit("response.refusal.delta", **where, delta="I can't ")
    s.emit("response.refusal.delta", **where, delta="do that.")
    s.emit("response.refusal.done", **where, refusal="I can't do that.")
    s.output.append({"id": "msg_r", "type": "message", "role": "assistant", "status": "completed",
                     "content": [{"type": "refusal", "refusal": "I can't do that."}]})
    _, chunks = run(s.completed())
    assert "".join(d.get("refusal") or "" for d in deltas(chunks)) == "I can't do that."
    assert finish_reasons(chunks) == ["stop"]
    message = aggregate_chat(s.events)["choices"][0]["message"]
    assert message["refusal"] == "I can't do that." and message["content"] is None
    ChatCompletion.model_validate(aggregate_chat(s.events))


def _text_only_in(where: str) -> list[dict[str, Any]]:
    s = Stream().start()
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    full = {"type": "output_text", "text": "All at once.", "annotations": []}
    done = {**item, "status": "completed", "content": [full]}
    loc = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    if where != "completed":
        s.emit("response.output_item.added", output_index=0, item=item)
    if where == "text.done":
        s.emit("response.output_text.done", **loc, text="All at once.")
    if where in ("text.done", "item.done"):
        s.emit("response.output_item.done", output_index=0, item=done)
    s.output.append(done)
    return s.completed()


@pytest.mark.parametrize("where", ["text.done", "item.done", "completed"])
def test_text_never_streamed_as_deltas_is_sent_exactly_once(where):
    _, chunks = run(_text_only_in(where))
    assert content(chunks) == "All at once."


def test_partial_deltas_are_completed_by_done_events():
    s = Stream().start()
    loc = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    s.emit("response.output_item.added", output_index=0,
           item={"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []})
    s.emit("response.output_text.delta", **loc, delta="Hello ")
    s.emit("response.output_text.done", **loc, text="Hello world")
    s.output.append({"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": "Hello world", "annotations": []}]})
    _, chunks = run(s.completed())
    assert [d.get("content") for d in deltas(chunks) if d.get("content")] == ["Hello ", "world"]


def test_function_call_known_only_from_item_done_or_completed():
    s = Stream().start()
    # No output_item.added: the deltas cannot be placed (no name yet); the done item says everything.
    s.call_delta("fc_1", 0, '{"q":1}')
    s.call_done("fc_1", "call_1", "search", 0, '{"q":1}')
    _, chunks = run(s.completed())
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert calls == [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": ""}},
                     {"index": 0, "function": {"arguments": '{"q":1}'}}]

    only_completed = Stream().start()
    only_completed.output.append({"id": "fc_2", "type": "function_call", "status": "completed", "name": "search",
                                  "arguments": "{}", "call_id": "call_2"})
    result = aggregate_chat(only_completed.completed())
    assert result["choices"][0]["message"]["tool_calls"][0]["id"] == "call_2"
    assert result["choices"][0]["finish_reason"] == "tool_calls"


def test_no_duplicates_when_deltas_done_and_completed_all_agree():
    answer = build("one two three four five")
    _, chunks = run(answer.events)
    assert content(chunks) == answer.output[0]["content"][0]["text"]


def test_bookkeeping_events_before_created_do_not_start_the_stream():
    answer = build("hi")
    rate_limits = {"type": "codex.rate_limits", "rate_limits": {"primary": {"used_percent": 3.0}}}
    stream = ChatStream("m")
    assert stream.feed(rate_limits) == []
    chunks = stream.feed(answer.events[0])
    assert chunks[0]["id"] == f"chatcmpl-{answer.response_id}"


def test_stream_without_created_still_has_one_id():
    answer = build("hi there")
    stream, chunks = run([e for e in answer.events if e["type"] not in ("response.created", "response.in_progress")])
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content(chunks) == answer.output[0]["content"][0]["text"]


def test_response_failed_raises():
    s = Stream().start().message("msg_1", "Half", done=False)
    events = s.failed("server_error", "The model crashed.")
    stream = ChatStream("m")
    chunks: list[dict[str, Any]] = []
    with pytest.raises(UpstreamFailed) as info:
        for event in events:
            chunks += stream.feed(event)
    assert (info.value.code, info.value.message) == ("server_error", "The model crashed.")
    assert content(chunks) == "Half"
    assert info.value.body() == {"error": {"message": "The model crashed.", "type": "server_error",
                                           "code": "server_error", "param": None}}
    assert stream.feed(events[-1]) == [] and stream.close() == []  # over


@pytest.mark.parametrize(("event", "code", "message", "status", "error_type"), [
    ({"type": "error", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None, "sequence_number": 3},
     "rate_limit_exceeded", "Slow down.", None, None),
    ({"type": "error", "status": 429, "error": {"type": "usage_limit_reached", "code": "usage_limit_reached",
                                               "message": "Limit reached."}},
     "usage_limit_reached", "Limit reached.", 429, "usage_limit_reached"),
    ({"type": "error"}, "server_error", "The upstream stream reported an error.", None, None),
    ({"type": "response.failed", "response": {"status": "failed"}}, "server_error",
     "The upstream response failed.", None, None),
    ({"type": "response.failed", "response": {"error": {"code": "context_length_exceeded", "message": "Too long."}}},
     "context_length_exceeded", "Too long.", None, None),
])
def test_error_shapes(event, code, message, status, error_type):
    with pytest.raises(UpstreamFailed) as info:
        ChatStream("m").feed(event)
    failure = info.value
    assert (failure.code, failure.message, failure.status, failure.type) == (code, message, status, error_type)
    assert failure.body()["error"]["type"] == (error_type or "server_error")


def test_close_without_terminal_is_stream_incomplete():
    answer = build("hi")
    stream = ChatStream("m")
    for event in answer.events[:-1]:
        stream.feed(event)
    with pytest.raises(UpstreamFailed) as info:
        stream.close()
    assert info.value.code == "stream_incomplete"


def test_events_after_the_terminal_are_ignored():
    answer = build("hi")
    stream = ChatStream("m")
    for event in answer.events:
        stream.feed(event)
    assert stream.feed(answer.events[3]) == [] and stream.feed(answer.events[-1]) == []
    assert stream.feed({"type": "response.failed", "response": {}}) == []


def test_garbage_events_do_not_crash():
    stream = ChatStream("m", include_usage=True)
    garbage: list[Any] = [
        None, "x", 3, [], {}, {"type": None}, {"type": 5}, {"type": "response.created", "response": "x"},
        {"type": "response.created", "response": {"id": 5, "created_at": "now", "model": None}},
        {"type": "response.output_item.added"}, {"type": "response.output_item.added", "item": "x"},
        {"type": "response.output_item.added", "item": {"type": "function_call"}},
        {"type": "response.output_text.delta"}, {"type": "response.output_text.delta", "delta": 5},
        {"type": "response.output_text.delta", "item_id": 3, "content_index": "a", "delta": "ok"},
        {"type": "response.output_text.done", "text": None},
        {"type": "response.function_call_arguments.delta", "item_id": "nope", "delta": "x"},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": None},
        {"type": "response.function_call_arguments.done", "output_index": 0, "arguments": 7},
        {"type": "response.output_item.done", "item": {"type": "message", "content": "x"}},
        {"type": "response.output_item.done", "item": {"type": "message", "content": [None, {"type": "output_text"}]}},
        {"type": "response.output_item.done", "item": {"type": "function_call", "arguments": None}},
        {"type": "response.refusal.delta", "delta": ["x"]},
    ]
    chunks: list[dict[str, Any]] = []
    for event in garbage:
        chunks += stream.feed(event)
    chunks += stream.feed({"type": "response.completed", "response": {"output": "x", "usage": "x"}})
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert chunks[-1]["usage"]["total_tokens"] == 0
    assert finish_reasons(chunks) == ["tool_calls"]  # the nameless function_call item still counted


def test_for_request_and_model_fallback():
    stream = ChatStream.for_request({"model": "my-model", "stream_options": {"include_usage": True}}, created=5)
    assert (stream.model, stream.include_usage, stream.created) == ("my-model", True, 5)
    assert ChatStream.for_request({"model": "m"}).include_usage is False
    s = Stream(model="")
    s.response.pop("model")
    _, chunks = run(s.start().message("msg", "x").completed(), model="asked-for")
    assert {c["model"] for c in chunks} == {"asked-for"}


def test_chat_usage_mapping():
    assert chat_usage(USAGE) == {
        "prompt_tokens": 1500, "completion_tokens": 40, "total_tokens": 1540,
        "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 16},
    }
    assert chat_usage({"input_tokens": 3, "output_tokens": 4})["total_tokens"] == 7
    assert chat_usage(None)["total_tokens"] == 0
    assert chat_usage({"input_tokens": True, "input_tokens_details": None})["prompt_tokens"] == 0


def test_sse_framing():
    chunk = {"id": "chatcmpl-1", "choices": [], "text": "é\n"}
    raw = sse_chunk(chunk)
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2
    assert json.loads(raw[6:]) == chunk
    assert DONE == b"data: [DONE]\n\n"


# ============================================================================ aggregate_chat


def test_aggregate_text():
    answer = build("Tell me a story", include_reasoning=True)
    result = aggregate_chat(answer.events, model="client-model")
    ChatCompletion.model_validate(result)
    assert result["id"] == f"chatcmpl-{answer.response_id}"
    assert result["object"] == "chat.completion" and result["model"] == MODEL
    assert result["created"] == answer.events[0]["response"]["created_at"]
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": answer.output[1]["content"][0]["text"],
                                 "refusal": None, "annotations": []}
    assert result["usage"] == chat_usage(answer.usage)


def test_aggregate_function_call():
    answer = build('call:lookup {"id": 7}')
    result = aggregate_chat(answer.events)
    ChatCompletion.model_validate(result)
    message = result["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [{"id": answer.output[0]["call_id"], "type": "function",
                                      "function": {"name": "lookup", "arguments": '{"id": 7}'}}]
    assert result["choices"][0]["finish_reason"] == "tool_calls"


def test_aggregate_empty_answer_has_empty_content():
    result = aggregate_chat(Stream().start().completed())
    assert result["choices"][0]["message"]["content"] == ""
    ChatCompletion.model_validate(result)


def test_aggregate_failures():
    with pytest.raises(UpstreamFailed) as info:
        aggregate_chat(Stream().start().message("m", "x").failed("server_is_overloaded", "Busy."))
    assert info.value.code == "server_is_overloaded"
    with pytest.raises(UpstreamFailed) as info:
        aggregate_chat(build("hi").events[:-1])
    assert info.value.code == "stream_incomplete"
    with pytest.raises(UpstreamFailed):
        aggregate_chat([])


def test_aggregate_stops_at_the_terminal():
    answer = build("hi")
    trailing = [{"type": "error", "code": "late", "message": "after the end"}]
    assert aggregate_chat(answer.events + trailing)["choices"][0]["finish_reason"] == "stop"


def test_module_exports():
    for name in chat.__all__:
        assert hasattr(chat, name)


# ============================================================================ integration with the sim


async def test_chat_tool_loop_through_the_real_sim(sim, http):
    """A two-request tool loop: chat request → translated → the sim over HTTP → chunks / completion."""
    from tests.simclient import post_responses

    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": 'call:get_weather {"city": "Paris"}'},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    ]
    request = body(*messages, tools=[TOOL], tool_choice="auto", stream=True,
                   stream_options={"include_usage": True}, max_tokens=50, temperature=0.3)
    resp, events = await post_responses(http, sim, chat_to_responses(request))
    assert resp.status == 200, events
    stream = ChatStream.for_request(request)
    chunks = [chunk for event in events for chunk in stream.feed(event)] + stream.close()
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert finish_reasons(chunks) == ["tool_calls"]
    usage = ChatCompletionChunk.model_validate(chunks[-1]).usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.total_tokens == (
        usage.prompt_tokens + usage.completion_tokens)
    # The same events, aggregated, give the assistant message of the next turn.
    first = ChatCompletion.model_validate(aggregate_chat(events))
    call = first.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})

    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    resp, events = await post_responses(http, sim, chat_to_responses(body(*messages, tools=[TOOL])))
    assert resp.status == 200, events
    second = ChatCompletion.model_validate(aggregate_chat(events))
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Hello from the codexlb simulator. The tool returned 13 characters."
    assert second.usage is not None and second.usage.prompt_tokens > first.usage.prompt_tokens


async def test_sim_failure_reaches_the_chat_stream_as_upstream_failed(sim, http):
    from codexlb.sim.faults import Fault
    from tests.simclient import post_responses

    sim.backend.faults.add(Fault(action="failed", code="server_error", message="boom", after_events=4))
    resp, events = await post_responses(http, sim, chat_to_responses(body({"role": "user", "content": "hi"})))
    assert resp.status == 200
    stream = ChatStream("m")
    with pytest.raises(UpstreamFailed) as info:
        for event in events:
            for chunk in stream.feed(event):
                ChatCompletionChunk.model_validate(chunk)
    assert (info.value.code, info.value.message) == ("server_error", "boom")
