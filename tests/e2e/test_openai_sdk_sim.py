"""The OpenAI Python SDK against the sim: its Responses streaming parser accepts the sim's SSE, and
its error mapping sees the sim's 400s as upstream's."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import openai
import pytest

MODEL = "gpt-5.5"
SDK_TIMEOUT_S = 30.0
PROMPT = "Tell me about load balancers"
# responses.build(): "Hello from the codexlb simulator. You said: <first 12 words of the last user text>"
EXPECTED_TEXT = f"Hello from the codexlb simulator. You said: {PROMPT}"


@pytest.fixture
def no_openai_env(monkeypatch):
    """The SDK reads OPENAI_* (base url, org, project, ...) from the environment: none of the developer's."""
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def client(sim, no_openai_env):
    account = sim.backend.accounts[0]
    client = openai.AsyncOpenAI(
        base_url=sim.codex_base_url,
        api_key=account.access_token,
        default_headers={"chatgpt-account-id": account.account_id},
        max_retries=0,
        timeout=SDK_TIMEOUT_S,
    )
    try:
        yield client
    finally:
        await client.close()


async def _collect(client) -> list:
    stream = await client.responses.create(model=MODEL, input=PROMPT, stream=True, store=False)
    events = []
    async with stream:
        async for event in stream:
            events.append(event)
    return events


async def test_sdk_streams_a_response(sim, client):
    events = await asyncio.wait_for(_collect(client), SDK_TIMEOUT_S)

    types = [event.type for event in events]
    assert types[0] == "response.created", types
    assert types[1] == "response.in_progress", types
    assert types[-1] == "response.completed", types
    assert [event.sequence_number for event in events] == list(range(len(events)))
    counts = Counter(types)
    assert counts["response.output_text.done"] == 1 and counts["response.completed"] == 1, counts

    created = events[0].response
    completed = events[-1].response
    assert created.id.startswith("resp_") and created.status == "in_progress" and created.model == MODEL
    assert completed.id == created.id and completed.status == "completed"

    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) == len(EXPECTED_TEXT.split())  # one delta per word
    text = "".join(deltas)
    assert text == EXPECTED_TEXT
    done = next(event for event in events if event.type == "response.output_text.done")
    assert done.text == text
    assert [item.type for item in completed.output] == ["message"]
    assert completed.output_text == text  # the SDK's own join of the final output

    usage = completed.usage
    assert usage is not None
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0  # a first request on a fresh sim

    # What the sim saw: one plain HTTP request from this account, answered in full.
    records = sim.backend.records_view()
    assert len(records) == 1, records
    record = records[0]
    assert record["transport"] == "http" and record["kind"] == "turn"
    assert record["account_id"] == sim.backend.accounts[0].account_id
    assert record["n_input"] == 1 and record["previous_response_id"] is None
    assert record["response_id"] == completed.id and record["outcome"] == "completed"
    assert record["usage"]["total_tokens"] == usage.total_tokens
    assert record["usage"]["input_tokens"] == usage.input_tokens


async def test_sdk_non_streaming_is_a_400(sim, client):
    with pytest.raises(openai.BadRequestError) as caught:
        await asyncio.wait_for(client.responses.create(model=MODEL, input=PROMPT, stream=False, store=False),
                               SDK_TIMEOUT_S)
    error = caught.value
    assert isinstance(error, openai.APIStatusError)
    assert error.status_code == 400
    assert error.code == "invalid_value"
    assert error.param == "stream"
    assert error.type == "invalid_request_error"
    assert "Stream must be set to true" in error.message
    # Rejected before it became a model request: the sim recorded nothing.
    assert sim.backend.records_view() == []
