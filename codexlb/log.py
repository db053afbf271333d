"""Structured logging with secrets masked before anything is written.

Our own events (structlog) and those of libraries (stdlib `logging`, e.g.
aiohttp) share one formatter, so one redaction step covers both.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from typing import Any, TextIO

import orjson
import structlog

from codexlb.errors import client_fault, fault_reason
from codexlb.logsink import LineSink

REDACTED = "[REDACTED]"

_SENSITIVE_KEYS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "token", "api_key", "apikey",
    "x-api-key", "password", "secret", "client_secret", "code_verifier", "secret_key",
})
_SENSITIVE_SUFFIXES = ("_token", "-token", "_password", "_secret", "_api_key")

# Order matters: a bearer header may hold a JWT; the header rule masks it whole.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"\brt_[A-Za-z0-9._-]{8,}"), REDACTED),
    (re.compile(
        r"(?i)\b(access_token|refresh_token|id_token|api_key|password|code|code_verifier|client_secret)"
        r"(\"?\s*[=:]\s*\"?)[^&\s\"',}]+"
    ), rf"\1\2{REDACTED}"),
)


@functools.lru_cache(maxsize=4096)
def _sensitive_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    return lowered in _SENSITIVE_KEYS or lowered.endswith(_SENSITIVE_SUFFIXES)


# Cheap checks that every secret pattern needs to pass first; most log strings (and this is every one)
# pass none. Substring tests on the lowered text: a case-insensitive regex costs ~20x more.
_MARKERS = ("bearer", "basic", "eyj", "sk-", "rt_")
_MAYBE_PAIR = re.compile(r"(?:token|api_key|password|code|code_verifier|client_secret)\"?\s*[=:]")


def redact_text(text: str) -> str:
    lowered = text.lower()
    for marker in _MARKERS:
        if marker in lowered:
            break
    else:
        if ("=" not in text and ":" not in text) or not _MAYBE_PAIR.search(lowered):
            return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any) -> Any:
    """Mask secrets in any value a log event may carry."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (REDACTED if _sensitive_key(k) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    return redact(event)


def _lead_with_essentials(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """JSON lines read better when time, level and event come first."""
    head = {k: event.pop(k) for k in ("timestamp", "level", "logger", "event") if k in event}
    head.update(event)
    return head


def _orjson_dumps(obj: Any, default: Any = None, **_: Any) -> str:
    return orjson.dumps(obj, default=default or str).decode()


_second_stamp: tuple[int, str] = (0, "")


def _timestamp(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper writes it at a fifth of its cost
    (the date and time are formatted once a second)."""
    global _second_stamp
    now = time.time()
    second = int(now)
    if _second_stamp[0] != second:
        _second_stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event["timestamp"] = f"{_second_stamp[1]}.{int((now - second) * 1_000_000):06d}Z"
    return event


_worker: int | None = None


def set_worker(number: int) -> None:
    """Every later line of this process names its worker (`serve --workers N`)."""
    global _worker
    _worker = number


def _add_worker(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    if _worker is not None:
        event.setdefault("worker", _worker)
    return event


_SHARED: list[Any] = [structlog.processors.add_log_level, _add_worker]


_sink: LineSink | None = None


def _off_the_loop(stream: TextIO) -> TextIO:
    """An OS file (stderr, a pipe, journald's socket) can block its writer: its lines go through a LineSink.
    An in-memory stream cannot, and is written directly."""
    global _sink
    if _sink is not None:
        _sink.close()
        _sink = None
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    _sink = LineSink(stream, on_drop=lambda n: get("codexlb.log").warning(
        "log lines dropped", count=n, reason="the log output took lines slower than they came"))
    return _sink  # type: ignore[return-value]


def flush(wait_s: float = 2.0) -> None:
    """Wait (at most `wait_s`) until every line logged so far is out of the process."""
    if _sink is not None:
        _sink.drain(wait_s)


class _ClientFaults(logging.Filter):
    """aiohttp answers a malformed request with 400, rightly, but logs it as its own error with a traceback
    (41,000 fuzzed requests made 1,009 such ERROR lines, 15.8 MB). The fault is the client's: one line with
    the reason and the peer instead, at info (at debug where aiohttp deems it noise: bytes that are not HTTP
    at all on a new connection)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = client_fault(record.exc_info[1] if record.exc_info else None)
        if fault is None:
            return True
        # aiohttp's message is "Error handling request from %s" with the peer as its argument. Its "Unhandled
        # exception" names no one: a body it read on after codexlb had answered the fault (logged then).
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        logger = get("codexlb.request")
        (logger.debug if record.levelno <= logging.DEBUG or remote is None else logger.info)(
            "malformed request", remote=remote, reason=fault_reason(fault), error=type(fault).__name__)
        return False


_CLIENT_FAULTS = _ClientFaults()


_stream: TextIO | None = None  # what `configure` was given; lines go to it through `_out`
_out: TextIO | None = None


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every log line, ours and libraries', to `stream` (stderr by default)."""
    global _stream, _out
    _stream = stream or sys.stderr
    _out = _off_the_loop(_stream)
    _install(level, fmt)


def reconfigure(level: str, fmt: str) -> None:
    """A new level and format for the lines that follow (a reload), to the same output: no line is lost."""
    if _stream is None:
        configure(level, fmt)
    else:
        _install(level, fmt)


def _install(level: str, fmt: str) -> None:
    assert _stream is not None and _out is not None
    if fmt == "auto":
        fmt = "console" if _stream.isatty() else "json"
    colors = fmt == "console" and _stream.isatty()
    renderers: list[Any] = (
        [structlog.dev.ConsoleRenderer(colors=colors)]
        if fmt == "console"
        else [_lead_with_essentials, structlog.processors.JSONRenderer(serializer=_orjson_dumps)]
    )
    # Tracebacks become text first, so the redaction step sees them too.
    # Stamped after redaction: a timestamp holds no secret, and scanning it is not free.
    tail = [structlog.processors.format_exc_info, _redact_processor, _timestamp, *renderers]

    # Libraries log through stdlib logging: one handler, the same tail.
    handler = logging.StreamHandler(_out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").propagate = False
    logging.getLogger("aiohttp.server").addFilter(_CLIENT_FAULTS)

    # Our own events skip stdlib logging: a request line is on the hot path.
    global _generation
    _generation += 1
    structlog.configure(
        processors=[*_SHARED, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=_out),
        cache_logger_on_first_use=True,
    )


class _Named:
    """A logger made at import time that follows later `configure` calls (tests reconfigure often)."""

    __slots__ = ("_name", "_bound", "_generation")

    def __init__(self, name: str) -> None:
        self._name, self._bound, self._generation = name, None, -1

    def __getattr__(self, method: str) -> Any:
        if self._generation != _generation:
            self._bound = structlog.get_logger().bind(logger=self._name)
            self._generation = _generation
        return getattr(self._bound, method)


_generation = 0


def get(name: str) -> Any:
    return _Named(name)
