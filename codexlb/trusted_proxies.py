"""Who a client is, for login limits and logs: the peer's address, or behind a reverse proxy the operator
trusts (`trusted_proxies`), the client that proxy names.

Forwarding headers are anyone's to write, so they are believed only from a trusted peer. Each proxy appends
the address it saw to X-Forwarded-For (and to Forwarded's `for=`), so the client is the right-most address
there that is not itself a trusted proxy; what stands left of it the client may have written. X-Real-IP
names one address. A proxy may set any of the three and pass on whatever a client wrote in the others, so
when they name different clients none of them is believed: the client is the proxy itself (all such
requests share its login limit), and one warning names the headers and what each said.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Callable, Mapping

from aiohttp import web

from codexlb import log

_log = log.get("codexlb.trusted_proxies")
# An entry that is no address is kept as the proxy wrote it ("unknown", an obfuscated name), this long at most.
_TOKEN_MAX = 64


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or network (such as 127.0.0.1 or 10.0.0.0/8)") from None


def check_trusted_proxies(entries: tuple[str, ...]) -> None:
    for entry in entries:
        _network(entry)


@functools.lru_cache(maxsize=4096)  # every request asks for its peer's: the same few, again and again
def _address(token: str) -> str:
    """One entry of a forwarding header as an address (ports, brackets and quotes gone; an IPv4 address
    mapped into IPv6 as itself), or the entry as written when it is no address."""
    token = token.strip().strip('"')
    if token.startswith("["):
        token = token[1:].partition("]")[0]
    elif token.count(":") == 1:
        token = token.partition(":")[0]
    try:
        address = ipaddress.ip_address(token)
    except ValueError:
        return token[:_TOKEN_MAX]
    return str(getattr(address, "ipv4_mapped", None) or address)


def _forwarded_for(value: str) -> list[str]:
    """The `for=` of each element of an RFC 7239 Forwarded header, in order."""
    found = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, _, token = pair.partition("=")
            if key.strip().lower() == "for":
                found.append(token)
    return found


_CHAINS: dict[str, Callable[[str], list[str]]] = {
    "X-Forwarded-For": lambda value: value.split(","),
    "Forwarded": _forwarded_for,
    "X-Real-IP": lambda value: [value],
}


class TrustedProxies:
    def __init__(self, entries: tuple[str, ...]) -> None:
        self._networks = tuple(_network(entry) for entry in entries)
        self._warned = False
        # The same few peers ask again and again.
        self.trusts = functools.lru_cache(maxsize=1024)(self._trusts)

    def _trusts(self, address: str) -> bool:
        try:
            parsed = ipaddress.ip_address(_address(address))
        except ValueError:
            return False
        return any(parsed in network for network in self._networks)

    def client(self, remote: str | None, headers: Mapping[str, str]) -> str:
        peer = _address(remote) if remote else "?"
        if not self._networks or not self.trusts(peer):
            return peer
        named = {}
        for header, chain in _CHAINS.items():
            value = headers.get(header)
            if value:
                # Right to left, past our own proxies; a chain of nothing but them names no client.
                client = next((a for a in map(_address, reversed(chain(value))) if a and not self.trusts(a)), None)
                if client is not None:
                    named[header] = client
        clients = set(named.values())
        if len(clients) == 1:
            return clients.pop()
        if clients and not self._warned:
            self._warned = True
            _log.warning("forwarding headers from a trusted proxy name different clients; none is believed, "
                         "the proxy itself counts as the client (make the proxy set one of them and drop "
                         "the others)", proxy=peer, **{h.lower().replace("-", "_"): a for h, a in named.items()})
        return peer


TRUSTED_PROXIES = web.AppKey("trusted_proxies", TrustedProxies)


def client_address(request: web.Request) -> str:
    """The client of a request to this app (see the module doc)."""
    return request.app[TRUSTED_PROXIES].client(request.remote, request.headers)
