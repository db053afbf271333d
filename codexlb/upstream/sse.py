"""Splitting an SSE byte stream into whole frames, so a relay never writes half an event and a
synthesized closing event always starts on a frame boundary.

Relaying needs only where the last complete frame ends; most frames are passed on unread. Frames
are split and named only when someone asks (`Batch.frames`), or picked out by name (`Batch.find`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator

import orjson


@dataclass(slots=True)
class Frame:
    raw: bytes  # the frame as upstream sent it, with its terminating blank line
    event: str  # the `event:` name, or the JSON `type` when there is no event line

    def data(self) -> Any:
        """The parsed `data:` payload."""
        lines = [line[5:].lstrip() for line in self.raw.split(b"\n") if line.startswith(b"data:")]
        return orjson.loads(b"\n".join(lines)) if lines else None


def _frame(raw: bytes) -> Frame | None:
    if raw.startswith(b":") or not raw.strip():
        return None
    for line in raw.split(b"\n", 2)[:2]:
        if line.startswith(b"event:"):
            return Frame(raw, line[6:].strip().decode("utf-8", "replace"))
    frame = Frame(raw, "")
    payload = frame.data()
    frame.event = payload.get("type", "") if isinstance(payload, dict) else ""
    return frame


class Batch:
    """The complete frames one read finished, as one block of bytes."""

    __slots__ = ("raw", "__dict__")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    @cached_property
    def frames(self) -> list[Frame]:
        return [f for raw in self.raw.split(b"\n\n")[:-1] if (f := _frame(raw + b"\n\n")) is not None]

    def first(self) -> Frame | None:
        """The first frame that is not a comment (upstream may open with keep-alive comments)."""
        start = 0
        while (end := self.raw.find(b"\n\n", start)) != -1:
            frame = _frame(self.raw[start:end + 2])
            if frame is not None:
                return frame
            start = end + 2
        return None

    def last(self) -> Frame | None:
        """The last frame that is not a comment (a terminal event is always the last of its batch)."""
        end = len(self.raw)
        while end > 0:
            cut = self.raw.rfind(b"\n\n", 0, end - 2)
            start = cut + 2 if cut != -1 else 0
            frame = _frame(self.raw[start:end])
            if frame is not None:
                return frame
            end = start
        return None

    def find(self, names: re.Pattern[bytes]) -> Iterator[Frame]:
        """Frames whose `event:` line matches `names` (see `event_names`), found in one pass."""
        for match in names.finditer(self.raw):
            end = self.raw.find(b"\n\n", match.start())
            frame = _frame(self.raw[match.start():end + 2])
            if frame is not None:
                yield frame

    def __bool__(self) -> bool:
        return bool(self.raw)


class FrameSplitter:
    """Feed bytes, get a Batch of the complete frames they finish (possibly empty)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> Batch:
        buffer = self._pending + chunk if self._pending else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end == -1:
            self._pending = buffer
            return Batch(b"")
        self._pending = buffer[end + 2:]
        return Batch(buffer[:end + 2])

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished frame (non-empty at the end means the stream was cut mid-event)."""
        return self._pending


def event_names(*names: str) -> re.Pattern[bytes]:
    """A pattern for `Batch.find`: `event:` lines at the start of a line naming one of `names`."""
    return re.compile(rb"^event: ?(?:" + b"|".join(re.escape(n.encode()) for n in names) + rb")\n", re.M)


def encode(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event.get("type", "message")).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
