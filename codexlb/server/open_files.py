"""Enough open files for the streams the settings let in.

Every proxied stream holds two sockets, the client's and upstream's, so a process left at the usual soft
limit of 1,024 runs out at about 500 streams: accept() then fails and new clients wait unanswered. `serve`
raises its soft limit to the hard one at start (the hard limit is what the administrator allows; systemd's
`LimitNOFILE` sets both), and says when even that is short of what `max_inflight` lets in.
"""

from __future__ import annotations

import resource

from codexlb import log
from codexlb.config import Settings

_log = log.get("codexlb.server")
# Besides two sockets per request: the listening socket, the database, log output, idle upstream connections.
_SPARE = 256


def raise_limit() -> int:
    """The soft limit raised to the hard one where the OS allows it; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def needed(settings: Settings) -> int:
    return 2 * settings.max_inflight + _SPARE


def check(limit: int, settings: Settings) -> None:
    """A warning at start when `max_inflight` streams would not all get their sockets."""
    if limit != resource.RLIM_INFINITY and limit < needed(settings):
        _log.warning("open files limit too low", limit=limit, needed=needed(settings),
                     hint="raise the hard limit (LimitNOFILE= in the systemd unit, or ulimit -Hn) or lower "
                          "max_inflight: every stream holds two sockets")
