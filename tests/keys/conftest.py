from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from codexlb.app import create_app
from codexlb.config import Settings
from codexlb.keys import API_KEY

# Routes of our own under each guarded prefix: the real proxy routes need upstream accounts.
GUARDED = ("/v1/__whoami", "/backend-api/__whoami", "/api/codex/__whoami")


@web.middleware
async def remote_from_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The test client always connects from 127.0.0.1; `x-test-remote` plays a client from elsewhere."""
    remote = request.headers.get("x-test-remote")
    return await handler(request.clone(remote=remote) if remote else request)


def keyed_app(settings: Settings) -> web.Application:
    app = create_app(settings)
    app.middlewares.insert(0, remote_from_header)

    async def whoami(request: web.Request) -> web.Response:
        record = request.get(API_KEY)
        return web.json_response({"key_id": record.id if record else None})

    for path in GUARDED:
        app.router.add_get(path, whoami)
    return app


@pytest.fixture
def app(settings):
    return keyed_app(settings)


@pytest.fixture
async def client(aiohttp_client, app):
    return await aiohttp_client(app)
