"""Which names the dashboard and the admin API answer to: the defence against DNS rebinding.

A page on a name its owner controls can make that name resolve to 127.0.0.1 and then call codexlb from
the operator's browser as its own site: cookies, CORS, `Origin` and `Sec-Fetch-Site` all see one origin.
Only the Host header gives it away, since it still names the attacker's domain. So a request to anything
but the proxy routes and the health checks must name this server:

- `localhost`, or any IP address (a page can rebind a name, never an address);
- the listen address (`host`) when it is a name;
- a name in `allowed_hosts`: exact, or any name under `*.domain`.

The port in Host is not compared: a rebinding page reaches the real port anyway, and a reverse proxy in
front sends its own. Case and a trailing dot do not count (DNS ignores both). A request with no Host is no
browser's (HTTP/1.0 tools) and passes.
"""

from __future__ import annotations

import ipaddress
import re

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from codexlb.errors import APIError

# Listen addresses that are every address, so no name of ours.
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
# Enough of a hostile Host to recognise it in the answer, not enough to fill it.
_SHOWN = 100


def host_name(host: str) -> str:
    """The name in a Host header or a setting, without port, brackets, case or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_allowed_hosts(entries: tuple[str, ...]) -> None:
    """The `allowed_hosts` setting: names, or `*.domain` for every name under a domain."""
    for entry in entries:
        name = entry.lower().removesuffix(".").removeprefix("*.")
        # No port: one here would suggest that it is compared, and it is not.
        if not (_is_address(name) or (name and all(_LABEL.match(label) for label in name.split(".")))):
            raise ValueError(f"{entry!r} is not a host name (give names such as lb.example.com or "
                             "*.example.com, without scheme or port)")


def check_listen_host(host: str) -> None:
    """The `host` setting: an IP address, a host name, or empty for every address."""
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    # A name's last label is never all digits, so 999.1.1.1 is a mistyped address, not a name.
    if host and not _is_address(host) and (not all(_LABEL.match(label) for label in labels)
                                           or labels[-1].isdigit()):
        raise ValueError(f"{host!r} is not an IP address or a host name")


class AllowedHosts:
    def __init__(self, listen_host: str, allowed: tuple[str, ...]) -> None:
        names = {host_name(entry) for entry in allowed}
        self._exact = {n for n in names if not n.startswith("*.")} | {"localhost"}
        # "*.example.com" matches names ending in ".example.com", not example.com itself.
        self._suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        if listen_host not in _WILDCARDS:
            self._exact.add(host_name(listen_host))

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return name in self._exact or name.endswith(self._suffixes) or _is_address(name)


def refusal(host: str) -> APIError:
    name = host_name(host)
    shown = name if len(name) <= _SHOWN else name[:_SHOWN] + "..."
    return APIError(
        421, f"codexlb does not answer to the name {shown!r} (the request's Host header) here: its dashboard, "
        "admin API and, while no API key exists, its proxy routes answer only to this server's names, against "
        "DNS rebinding. If that is a name of this server, add it to the "
        f"allowed_hosts setting (config file: allowed_hosts = [\"{shown}\"]; environment: "
        f"CODEXLB_ALLOWED_HOSTS={shown}; flag: --allowed-hosts {shown}), or use the server's address.",
        code="host_not_allowed", type="invalid_request_error")


ALLOWED_HOSTS = web.AppKey("allowed_hosts", AllowedHosts)


def check(request: web.Request) -> None:
    """Raise the 421 a request gets when its Host is not one of ours."""
    host = request.headers.get(hdrs.HOST)
    if host is not None and not request.app[ALLOWED_HOSTS].allows(host):
        raise refusal(host)


def middleware(any_host: tuple[str, ...]) -> Middleware:
    """Refuse (421) a request outside the `any_host` path prefixes whose Host is not one of ours; before
    any other check, so no 401 or 403 tells a rebinding page anything. (The proxy routes, among `any_host`,
    check the Host themselves while no key is needed: `codexlb.handlers.client_auth`.)"""

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(any_host):
            check(request)
        return await handler(request)

    return host_check
