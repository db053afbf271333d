"""Is an address this machine? Decides who is served without an API key, and who may use the admin API."""

from __future__ import annotations

import functools
import ipaddress


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
