"""What the fuzz tests generate: JSON of every kind, near-valid request bodies (a valid shape with fields
mutated), outright junk bodies, and odd headers. Shared by the proxy, admin and WebSocket tests."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.harness import LAST_RESPONSE

MODELS = ("gpt-5.5", "gpt-5.1-codex")
ODD_STRINGS = (
    "", " ", "\x00", "\t\n", "\u2028", "\u202e", "\ufeff", "\uffff", "💥" * 3, "a" * 5000, "null", "[]", "{}",
    "../../etc/passwd", "%00", "%2e%2e/", "\\u0000", "'; DROP TABLE requests;--", "<script>", "é", "Ω≈ç√",
    'call:exec_command {"cmd": "echo hi"}', "call:broken {not json", "resp_0000", "session:x", "cache:x",
)


def one_of_these(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """`st.sampled_from(values)` with a short repr: Hypothesis writes a strategy's repr when a test fails, and
    these values run to kilobytes."""
    return st.integers(0, len(values) - 1).map(values.__getitem__)


texts = st.one_of(st.text(max_size=24), one_of_these(ODD_STRINGS))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(texts, inner, max_size=4)), max_leaves=8)
not_strings = json_values.filter(lambda v: not isinstance(v, str))


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each `weight` times as likely (`st.one_of` draws every branch alike, repeated
    ones too)."""
    return one_of_these(tuple(strategy for weight, strategy in choices for _ in range(weight))).flatmap(lambda x: x)


def one_in(n: int) -> st.SearchStrategy[bool]:
    return st.sampled_from([True] + [False] * (n - 1))


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: valid five times in six, else any JSON at all."""
    return weighted((5, valid), (1, json_values))


def ids(prefix: str) -> st.SearchStrategy[str]:
    return st.from_regex(rf"{prefix}_[0-9a-f]{{4,24}}", fullmatch=True)


# An anchor that is well-formed (upstream may or may not know it; LAST_RESPONSE: the last one it gave),
# malformed (empty, blank, control characters: a 400), or not a string at all.
anchors = st.one_of(
    ids("resp"), st.just(LAST_RESPONSE.decode()),
    st.sampled_from(("", " ", "\x00", "\t", "resp_\x00", "\n", "resp_1\x7f", "resp 1")),
    st.tuples(ids("resp"), st.characters(codec="ascii", categories=["Cc"])).map("".join),
    not_strings,
)

part = st.fixed_dictionaries(
    {"type": field(st.sampled_from(("input_text", "output_text", "input_image", "input_file", "refusal", "text",
                                    "summary_text", "image_url", "file")))},
    optional={"text": field(texts), "image_url": field(texts | st.fixed_dictionaries({"url": field(texts)})),
              "annotations": field(st.just([])), "file_data": field(texts), "file_id": field(texts),
              "detail": field(st.sampled_from(("auto", "low", "high"))), "refusal": field(texts)})
contents = st.one_of(texts, st.lists(part, max_size=3))
message = st.fixed_dictionaries(
    {"role": field(st.sampled_from(("user", "developer", "assistant", "system", "tool"))), "content": field(contents)},
    optional={"type": field(st.just("message")), "id": field(ids("msg")),
              "status": field(st.sampled_from(("completed", "in_progress", "incomplete")))})
function_call = st.fixed_dictionaries(
    {"type": st.just("function_call"), "name": field(texts), "arguments": field(texts), "call_id": field(ids("call"))},
    optional={"id": field(ids("fc")), "status": field(st.just("completed"))})
function_call_output = st.fixed_dictionaries(
    {"type": st.just("function_call_output"), "call_id": field(ids("call")), "output": field(texts)},
    optional={"id": field(ids("fco"))})
reasoning = st.fixed_dictionaries(
    {"type": st.just("reasoning"), "encrypted_content": field(texts)},
    optional={"id": field(ids("rs")), "content": field(st.none()),
              "summary": field(st.lists(st.fixed_dictionaries({"type": st.just("summary_text"), "text": texts}),
                                        max_size=2))})
other_item = st.fixed_dictionaries(
    {"type": field(st.sampled_from(("compaction", "compaction_trigger", "item_reference", "custom_tool_call",
                                    "local_shell_call", "web_search_call", "nope")) | texts)},
    optional={"id": json_values, "call_id": json_values, "output": json_values, "encrypted_content": json_values})
items = st.one_of(message, function_call, function_call_output, reasoning, other_item, json_values)
tools = st.lists(st.fixed_dictionaries(
    {"type": field(st.sampled_from(("function", "web_search", "custom"))), "name": field(texts)},
    optional={"parameters": field(st.just({"type": "object", "properties": {}})), "strict": field(st.booleans()),
              "description": field(texts)}), max_size=2)

RESPONSES_OPTIONAL = {
    "stream": field(st.booleans()), "store": field(st.booleans()), "previous_response_id": anchors,
    "instructions": field(texts), "tools": field(tools), "parallel_tool_calls": field(st.booleans()),
    "tool_choice": field(st.sampled_from(("auto", "none", "required"))),
    "include": field(st.lists(st.just("reasoning.encrypted_content") | texts, max_size=2)),
    "prompt_cache_key": field(texts), "generate": field(st.booleans()), "background": field(st.booleans()),
    "reasoning": field(st.fixed_dictionaries({}, optional={
        "effort": field(st.sampled_from(("low", "medium", "high"))), "summary": field(st.just("auto"))})),
    "text": field(st.fixed_dictionaries({}, optional={"verbosity": field(st.sampled_from(("low", "high")))})),
    "client_metadata": field(st.dictionaries(texts, texts, max_size=3)), "metadata": json_values,
    "max_output_tokens": field(st.integers(1, 100_000)), "temperature": field(st.floats(0, 2)),
}


@st.composite
def sometimes_without(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A body, now and then with one of its fields (required ones too) left out."""
    body = draw(bodies)
    if body and draw(one_in(8)):
        del body[draw(st.sampled_from(sorted(body)))]
    return body


def responses_bodies(**extra: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return sometimes_without(st.fixed_dictionaries(
        {"model": field(st.sampled_from(MODELS)), "input": field(texts | st.lists(items, max_size=4)), **extra},
        optional=RESPONSES_OPTIONAL))


def dump_json(value: Any, ascii_only: bool) -> bytes:
    # The standard library's encoder: it writes what orjson would refuse to (integers past 64 bits).
    return json.dumps(value, ensure_ascii=ascii_only).encode()


JUNK_BODIES = (
    b"", b" ", b"{", b"}", b"null", b"[]", b'"x"', b"1", b"true", b'{"model": "gpt-5.5", "input": "hi"',
    b"\xff\xfe\x00", b'{"model": "gpt-5.5", "input": "\\ud800"}', b'{"model": 1e400}', b"\x1f\x8b\x08\x00",
    b"model=gpt-5.5&input=hi", b'{"model": "gpt-5.5", "model": 5, "input": []}', b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000, b"\x00" * 64,
    # Deeper than orjson writes (255 levels) though not than it reads (1024): fine in, refused on the way out.
    b'{"model": "gpt-5.5", "input": "hi", "metadata": ' + b"[" * 300 + b"]" * 300 + b"}",
)
junk_bodies = st.one_of(one_of_these(JUNK_BODIES), st.binary(max_size=64),
                        st.builds(dump_json, json_values, st.booleans()))


def bodies(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bytes of a JSON body from `objects` five times in six, else junk."""
    return weighted((5, st.builds(dump_json, objects, st.booleans())), (1, junk_bodies))


header_values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=20),
    st.sampled_from(("", " ", "é", "gpt-5.5", "null", "0", "-1", "1" * 40, "bearer", "Bearer ")),
)
# Now and then one header longer than a server takes (aiohttp: 8190 bytes).
oversized = one_of_these(({},) * 19 + ({"x-codex-turn-metadata": "a" * 9000},))
CONTENT_TYPES = ("application/json", "application/json; charset=utf-8", "text/plain", "application/octet-stream",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                 "text/event-stream", "*/*", ";;;")
ENCODINGS = ("gzip", "deflate", "br", "zstd", "identity", "GZIP", "gzip, deflate", "x-junk", "")


@st.composite
def encoded(draw: st.DrawFn, body: bytes) -> tuple[dict[str, str], bytes]:
    """A Content-Type, and now and then a Content-Encoding: for gzip and deflate, as often a real one as a
    body that says so and is not."""
    headers = {} if draw(one_in(6)) else {"Content-Type": draw(st.sampled_from(CONTENT_TYPES) | header_values)}
    if draw(one_in(6)):
        encoding = draw(st.sampled_from(ENCODINGS))
        headers["Content-Encoding"] = encoding
        if draw(st.booleans()):
            if encoding in ("gzip", "GZIP"):
                body = gzip.compress(body)
            elif encoding == "deflate":
                body = zlib.compress(body)
    return headers, body


def client_headers(key: str, *, oversize: bool = True) -> st.SearchStrategy[dict[str, str]]:
    """A proxy client's headers: its key mostly (else none, a wrong one, or junk), and odd other headers;
    `oversize`: now and then one too long (never for HEAD: a server that cannot read a head cannot know it
    was a HEAD, and answers with a body)."""
    good = f"Bearer {key}"
    auth = weighted((4, st.just({"Authorization": good})), (1, st.just({"x-api-key": key})),
                    (1, st.fixed_dictionaries({"x-api-key": header_values, "Authorization": st.just(good)})),
                    (1, st.just({})), (1, st.fixed_dictionaries({"Authorization": header_values})))
    others = st.fixed_dictionaries({}, optional={
        name: header_values for name in (
            "session_id", "session-id", "x-codex-turn-state", "chatgpt-account-id", "originator", "OpenAI-Beta",
            "x-request-id", "Accept", "X-Forwarded-For", "X-Real-IP", "Forwarded", "x-codex-turn-metadata",
            "Origin", "Sec-Fetch-Site", "Cookie", "Accept-Encoding", "User-Agent", "Host")})
    return st.builds(lambda a, o, big: {**o, **big, **a}, auth, others, oversized if oversize else st.just({}))
