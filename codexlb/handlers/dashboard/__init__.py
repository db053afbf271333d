"""The operator's dashboard at `/`: static files shipped in the package (no build step, no CDN), which
read and change everything through the admin API. The page itself is public; every call it makes is
checked by `codexlb.admin_auth`, and it shows a login form when they answer 401."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
# A page that can be shown only by us, scripts only from us: no inline code, no other origin.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=_HEADERS)


def setup(app: web.Application) -> None:
    # The files shipped, by name, rather than a static directory: a path is looked up in this set, never
    # on disk, so no request path (too long, `..`, a symlink) reaches the file system.
    assets = frozenset(path.name for path in STATIC.iterdir() if path.is_file())

    async def asset(request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers=_HEADERS)

    app.router.add_get("/", index)
    app.router.add_get("/dashboard/{name}", asset)
