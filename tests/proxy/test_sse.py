"""Frame splitting: whole frames only, in any chunking, and the watched events found by name."""

from __future__ import annotations

import pytest

from codexlb.upstream.sse import Batch, FrameSplitter, encode, event_names

EVENTS = [{"type": "response.created", "response": {"id": "r1"}},
          {"type": "response.output_text.delta", "delta": "hi\n\nthere"},
          {"type": "response.completed", "response": {"id": "r1", "usage": {"total_tokens": 3}}}]
STREAM = b"".join(encode(e) for e in EVENTS)


@pytest.mark.parametrize("size", [1, 2, 7, 50, len(STREAM)])
def test_any_chunking_yields_the_same_whole_frames(size):
    splitter = FrameSplitter()
    batches = [splitter.feed(STREAM[i:i + size]) for i in range(0, len(STREAM), size)]
    assert b"".join(b.raw for b in batches) == STREAM
    assert all(b.raw.endswith(b"\n\n") for b in batches if b)
    assert [f.data() for b in batches for f in b.frames] == EVENTS
    assert splitter.pending == b""


def test_a_cut_leaves_the_partial_frame_pending():
    splitter = FrameSplitter()
    batch = splitter.feed(STREAM[:-10])
    assert [f.event for f in batch.frames] == ["response.created", "response.output_text.delta"]
    assert splitter.pending and not splitter.pending.endswith(b"\n\n")


def test_crlf_comments_and_data_only_frames():
    raw = b": keepalive\r\n\r\nevent: error\r\ndata: {\"type\":\"error\"}\r\n\r\ndata: {\"type\":\"x.y\"}\n\n"
    batch = FrameSplitter().feed(raw)
    assert [f.event for f in batch.frames] == ["error", "x.y"]
    assert batch.first().event == "error"


def test_find_picks_watched_frames_without_splitting_the_rest():
    batch = Batch(STREAM)
    found = list(batch.find(event_names("response.completed", "response.created")))
    assert [f.event for f in found] == ["response.created", "response.completed"]
    assert found[1].data()["response"]["usage"] == {"total_tokens": 3}
    # A delta whose text contains the words of an event line is not an event line.
    tricky = Batch(encode({"type": "response.output_text.delta", "delta": "\nevent: response.completed\n"}))
    assert list(tricky.find(event_names("response.completed"))) == []


def test_first_and_last_skip_comments():
    raw = b": ping\n\n" + STREAM + b": ping\n\n"
    batch = Batch(raw)
    assert batch.first().event == "response.created"
    assert batch.last().event == "response.completed"
    assert Batch(b": only\n\n").last() is None and Batch(b"").last() is None
