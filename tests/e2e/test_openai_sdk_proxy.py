"""The OpenAI Python SDK → codexlb → sim: /v1/responses and /v1/chat/completions, streamed and not."""

from __future__ import annotations

import json

import openai
import pytest

from tests.proxy.conftest import start_proxy

MODEL = "gpt-5.5"
TOOL = {"type": "function", "function": {"name": "exec_command", "description": "Run a shell command.",
                                         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                                                        "required": ["cmd"]}}}


@pytest.fixture
async def client(aiohttp_server, settings, sim, monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    proxy = await start_proxy(aiohttp_server, settings, sim)
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-anything", max_retries=0) as sdk:
        yield sdk


async def test_responses_streamed(client):
    stream = await client.responses.create(model=MODEL, input="stream me", stream=True)
    kinds, deltas, final = [], [], None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "".join(deltas) and "You said: stream me" in final.output_text
    assert final.usage.total_tokens > 0


async def test_responses_not_streamed(client):
    response = await client.responses.create(model=MODEL, input="all at once")
    assert response.status == "completed"
    assert "You said: all at once" in response.output_text
    assert response.usage.output_tokens > 0


async def test_responses_bad_request_is_an_sdk_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=MODEL, input=5)  # type: ignore[arg-type]
    assert caught.value.status_code == 400 and caught.value.code == "invalid_type"


async def test_chat_completion_not_streamed_with_a_tool_call(client):
    completion = await client.chat.completions.create(
        model=MODEL, tools=[TOOL],
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": 'call:exec_command {"cmd": "ls"}'}])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "exec_command" and json.loads(call.function.arguments) == {"cmd": "ls"}

    followed = await client.chat.completions.create(
        model=MODEL, tools=[TOOL],
        messages=[{"role": "user", "content": 'call:exec_command {"cmd": "ls"}'},
                  {"role": "assistant", "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "a.txt\nb.txt\n"}])
    assert followed.choices[0].finish_reason == "stop"
    assert "The tool returned 12 characters." in followed.choices[0].message.content
    assert followed.usage.prompt_tokens > 0


async def test_chat_completion_streamed_with_a_tool_call_and_usage(client):
    stream = await client.chat.completions.create(
        model=MODEL, tools=[TOOL], stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": 'call:exec_command {"cmd": "pwd"}'}])
    names, arguments, finish, usage = [], "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function.name:
                    names.append(call.function.name)
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert names == ["exec_command"] and json.loads(arguments) == {"cmd": "pwd"}
    assert finish == "tool_calls" and usage.total_tokens > 0


async def test_chat_completion_streamed_text(client):
    stream = await client.chat.completions.create(model=MODEL, stream=True,
                                                  messages=[{"role": "user", "content": "hello chat"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert "You said: hello chat" in text


async def test_models_list(client):
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert "gpt-5.5" in ids and "gpt-5.1-codex" in ids
