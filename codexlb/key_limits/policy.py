"""What an operator may set on a key, checked once where it is set (CLI, admin API, dashboard): each value, or
one clear error and nothing changed.

Values come as JSON gives them (the CLI builds the same): limits as whole numbers, models as a list of names or
globs, the expiry as ISO-8601 text (a time without a zone is UTC), a note as text; None clears.
"""

from __future__ import annotations

import datetime
import re
from fnmatch import fnmatchcase
from typing import Any, Mapping

LIMITS = ("rpm", "tokens_5h", "tokens_day", "tokens_week")
FIELDS = ("max_concurrency", *LIMITS, "models", "expires_at", "note")
MAX_LIMIT = 10**12
MAX_NOTE = 500
MAX_MODELS = 64
# A model name or glob: what model names are made of, plus the glob's * ? [ ] (and ! inside brackets).
_GLOB = re.compile(r"^[A-Za-z0-9._:/*?\[\]!-]{1,128}$")
_WHAT = {"max_concurrency": "max concurrency", "rpm": "requests per minute", "tokens_5h": "tokens per 5 hours",
         "tokens_day": "tokens per day", "tokens_week": "tokens per week"}


class PolicyError(ValueError):
    """A value that cannot be set; the message says which and why, in one line."""


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{_WHAT[name]} ({name}) must be a whole number, not {value!r}")
    if value < 1:
        raise PolicyError(f"{_WHAT[name]} ({name}) must be at least 1 (to stop a key, revoke it)")
    if value > MAX_LIMIT:
        raise PolicyError(f"{_WHAT[name]} ({name}) of {value} is more than {MAX_LIMIT:.0e}: leave it unset for no "
                          "limit")
    return value


def _glob(value: Any) -> str:
    if not isinstance(value, str) or not _GLOB.match(value):
        raise PolicyError(f"model {value!r} is not a model name or glob (letters, digits, . _ : / - and * ? [ ])")
    depth = 0
    for char in value:
        depth += char == "["
        depth -= char == "]"
        if depth not in (0, 1):
            raise PolicyError(f"model glob {value!r} has unbalanced brackets")
    if depth:
        raise PolicyError(f"model glob {value!r} has unbalanced brackets")
    return value


def _models(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise PolicyError("models must be a non-empty list of model names or globs (or null for any model)")
    if len(value) > MAX_MODELS:
        raise PolicyError(f"models lists at most {MAX_MODELS} names or globs")
    return tuple(dict.fromkeys(_glob(v) for v in value))


def parse_time(text: str) -> float:
    """ISO-8601 text as epoch seconds (UTC when no zone is given)."""
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise PolicyError(f"{text!r} is not an ISO-8601 time (e.g. 2027-01-31T18:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _expiry(value: Any, now: float) -> float:
    if not isinstance(value, str):
        raise PolicyError("expires_at must be an ISO-8601 time, e.g. 2027-01-31T18:00:00Z (or null for never)")
    at = parse_time(value)
    if at <= now:
        raise PolicyError(f"expiry {value} is in the past")
    return at


def _note(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_NOTE or any(ord(c) < 32 and c != "\t" for c in value):
        raise PolicyError(f"note must be one line of text of at most {MAX_NOTE} characters")
    return value


def changes(raw: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The checked values of `raw` (field -> value, None to clear), or PolicyError for the first bad one."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise PolicyError(f"unknown field(s): {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    checked: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            checked[name] = None
        elif name == "models":
            checked[name] = _models(value)
        elif name == "expires_at":
            checked[name] = _expiry(value, now)
        elif name == "note":
            checked[name] = _note(value)
        else:
            checked[name] = _whole(name, value)
    return checked


def model_allowed(models: tuple[str, ...], model: str) -> bool:
    return any(fnmatchcase(model, glob) for glob in models)
