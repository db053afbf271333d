"""Every proxy route over HTTP, fed generated bodies and headers: near-valid requests with fields mutated,
outright junk, odd content types and encodings. See `tests.fuzz.harness` for what each answer must be."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import strategies as s
from tests.fuzz.harness import check_answer, fuzz_settings

chat_part = st.fixed_dictionaries(
    {"type": s.field(st.sampled_from(("text", "image_url", "file", "refusal", "input_text")))},
    optional={"text": s.field(s.texts), "refusal": s.field(s.texts),
              "image_url": s.field(s.texts | st.fixed_dictionaries({"url": s.field(s.texts)}, optional={
                  "detail": s.field(st.just("auto"))})),
              "file": s.field(st.fixed_dictionaries({}, optional={"file_data": s.field(s.texts),
                                                                  "file_id": s.field(s.texts)}))})
tool_call = st.fixed_dictionaries(
    {"id": s.field(s.ids("call")), "function": s.field(st.fixed_dictionaries(
        {"name": s.field(s.texts)}, optional={"arguments": s.field(s.texts | st.just({"a": 1}))}))},
    optional={"type": s.field(st.just("function"))})
chat_message = st.fixed_dictionaries(
    {"role": s.field(st.sampled_from(("system", "developer", "user", "assistant", "tool"))),
     "content": s.field(s.texts | st.lists(chat_part, max_size=3) | st.none())},
    optional={"tool_calls": s.field(st.lists(tool_call, max_size=2)), "tool_call_id": s.field(s.ids("call")),
              "name": s.field(s.texts), "refusal": s.field(s.texts), "function_call": s.json_values})
chat_tools = st.lists(st.fixed_dictionaries(
    {"type": s.field(st.just("function")), "function": s.field(st.fixed_dictionaries(
        {"name": s.field(s.texts)}, optional={"parameters": s.field(st.just({"type": "object"})),
                                              "description": s.field(s.texts), "strict": s.field(st.booleans())}))}),
    max_size=2)
chat_bodies = s.sometimes_without(st.fixed_dictionaries(
    {"model": s.field(st.sampled_from(s.MODELS)), "messages": s.field(st.lists(chat_message, min_size=1, max_size=4))},
    optional={
        "stream": s.field(st.booleans()), "stream_options": s.field(st.fixed_dictionaries(
            {}, optional={"include_usage": s.field(st.booleans())})),
        "tools": s.field(chat_tools), "parallel_tool_calls": s.field(st.booleans()),
        "tool_choice": s.field(st.sampled_from(("auto", "none", "required")) | st.fixed_dictionaries(
            {"type": s.field(st.sampled_from(("function", "allowed_tools"))),
             "function": s.field(st.fixed_dictionaries({"name": s.field(s.texts)}))})),
        "response_format": s.field(st.fixed_dictionaries(
            {"type": s.field(st.sampled_from(("text", "json_object", "json_schema")))},
            optional={"json_schema": s.field(st.fixed_dictionaries({"name": s.field(s.texts),
                                                                    "schema": s.field(st.just({}))}))})),
        "n": s.field(st.integers(0, 3)), "reasoning_effort": s.field(st.sampled_from(("low", "high"))),
        "verbosity": s.field(s.texts), "prompt_cache_key": s.field(s.texts), "modalities": s.field(
            st.lists(st.sampled_from(("text", "audio")), max_size=2)),
        "functions": s.json_values, "audio": s.json_values, "max_tokens": s.field(st.integers(1, 1000)),
        "temperature": s.field(st.floats(0, 2)), "stop": s.json_values, "user": s.field(s.texts),
    }))
queries = st.one_of(st.just(""), st.lists(st.tuples(s.texts, s.texts), max_size=3).map(
    lambda pairs: "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)))


def fuzz_post(stack, paths: tuple[str, ...], objects: st.SearchStrategy, examples: int) -> None:
    """POST to `paths`: bodies from `objects` (or junk), the client's headers, odd content types and encodings."""
    since = stack.log.mark()

    @fuzz_settings(examples)
    @given(path=st.sampled_from(paths), query=queries, headers=s.client_headers(stack.key), data=st.data())
    def one(path, query, headers, data):
        extra, body = data.draw(s.bodies(objects).flatmap(s.encoded))
        body = stack.anchored(body)
        reply = stack.send("POST", path + query, {**headers, **extra}, body)
        check_answer(reply, body)
        stack.seen(reply.body)

    one()
    stack.assert_healthy(since)


def test_codex_responses(stack):
    # The Codex CLI's route: with a session header or prompt_cache_key it rides the HTTP bridge.
    fuzz_post(stack, ("/backend-api/codex/responses",), s.responses_bodies(), 800)


def test_v1_responses(stack):
    fuzz_post(stack, ("/v1/responses",), s.responses_bodies(), 600)


def test_chat_completions(stack):
    fuzz_post(stack, ("/v1/chat/completions",), chat_bodies, 600)


def test_compact(stack):
    fuzz_post(stack, ("/backend-api/codex/responses/compact", "/v1/responses/compact"), s.responses_bodies(), 400)


PROXY_PATHS = ("/v1/models", "/backend-api/codex/models", "/api/codex/usage", "/v1/responses", "/v1/chat/completions",
               "/backend-api/codex/responses", "/v1/responses/compact", "/backend-api/codex/responses/compact",
               "/v1/nope", "/backend-api/", "/v1/", "/api/codex/")
METHODS = ("GET", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "POST")


def test_other_methods_and_paths(stack):
    """The GET routes with odd queries and headers, and every proxy path with a method it does not take."""
    since = stack.log.mark()

    @fuzz_settings(300)
    @given(method=st.sampled_from(METHODS), path=st.sampled_from(PROXY_PATHS) | st.lists(
        s.texts, min_size=1, max_size=3).map(lambda parts: "/v1/" + "/".join(quote(p, safe="") for p in parts)),
           query=queries, headers=s.client_headers(stack.key, oversize=False), big=s.oversized,
           body=st.none() | s.junk_bodies)
    def one(method, path, query, headers, big, body):
        headers = headers if method == "HEAD" else {**headers, **big}
        reply = stack.send(method, path + query, headers, body if method != "GET" else None)
        check_answer(reply, body, method=method)

    one()
    stack.assert_healthy(since)
