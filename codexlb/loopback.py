"""Is a client this machine? Decides who is served without an API key and who may use the admin API without
a password. (Who a client is behind a reverse proxy: `codexlb.trusted_proxies`.)"""

from __future__ import annotations

import functools
import ipaddress
from typing import Mapping


def is_loopback_host(host: str) -> bool:
    """A listen address reachable only from this machine. Any other name counts as remote: a name
    that resolves elsewhere must not pass for local."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)
def is_loopback_remote(remote: str | None) -> bool:
    """A client's address (`request.remote`); cached, since the same few clients ask again and again."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    # A dual-stack listener ("::") sees IPv4 clients as ::ffff:a.b.c.d; judge the IPv4 address.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


# Headers a reverse proxy adds (nginx as usually set up, Caddy, Traefik, Apache, cloudflared).
_FORWARDING = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "Via", "CF-Connecting-IP", "True-Client-IP")


def forwarded(headers: Mapping[str, str]) -> str | None:
    """The forwarding header a request carries, if any: it came from elsewhere through a proxy."""
    return next((name for name in _FORWARDING if name in headers), None)


def is_local_request(remote: str | None, headers: Mapping[str, str]) -> bool:
    """Made on this machine: a loopback peer that no proxy forwarded. A reverse proxy on this machine
    connects from loopback too, on behalf of anyone; the headers it adds give it away."""
    return is_loopback_remote(remote) and forwarded(headers) is None

