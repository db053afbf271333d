"""Which HTTP proxy, if any, calls to upstream (the ChatGPT backend and the OAuth server) go through.

`upstream_proxy` left empty follows the environment as curl and the Codex CLI do: HTTPS_PROXY,
HTTP_PROXY or ALL_PROXY by the target's scheme (lower-case names first), NO_PROXY for hosts reached
directly, and never a proxy for this machine (the sim). A URL sends every upstream call through
that proxy; `direct` ignores the environment. Decided once at start, not per request.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Sequence

from yarl import URL

from codexlb.config import DIRECT, proxy_url
from codexlb.loopback import is_loopback_host


@dataclass(frozen=True, slots=True)
class Via:
    """The proxy upstream calls go through (None: direct), its credentials, and which setting named it."""

    proxy: URL | None = None
    user: str | None = None
    password: str = ""
    source: str = ""
    # Why a proxy the environment names is not used (an unsupported kind), for a warning at start.
    ignored: str = ""


def _via(url: URL, source: str) -> Via:
    return Via(url.with_user(None), url.user, url.password or "", source)


def _from_environment(target: str) -> Via:
    url = URL(target)
    host = url.host or ""
    proxies = urllib.request.getproxies_environment()
    if is_loopback_host(host) or urllib.request.proxy_bypass_environment(host, proxies):
        return Via()
    for name in (url.scheme, "all"):
        value = proxies.get(name)
        if value:
            source = f"{name.upper()}_PROXY"
            try:
                return _via(proxy_url(value), source)
            except ValueError as exc:
                return Via(ignored=f"{source} {exc}")
    return Via()


def choose(setting: str, targets: Sequence[str]) -> Via:
    """The one way to reach all of `targets` (upstream and auth base URLs). ValueError when the
    environment sends them different ways: one session has one proxy."""
    if setting == DIRECT:
        return Via()
    if setting:
        return _via(proxy_url(setting), "upstream_proxy")
    ways = [_from_environment(target) for target in targets]
    if len({(way.proxy, way.user, way.password) for way in ways}) > 1:
        raise ValueError("the proxy environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY) sends "
                         f"{' and '.join(targets)} different ways; set upstream_proxy to one proxy URL or 'direct'")
    return next((way for way in ways if way.ignored), ways[0])
