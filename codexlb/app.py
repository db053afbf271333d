"""The application factory: every route and middleware codexlb serves, in one place."""

from __future__ import annotations

from aiohttp import web

from codexlb import health, middlewares
from codexlb.config import Settings

SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[middlewares.access_log, middlewares.openai_errors])
    app[SETTINGS] = settings
    app.on_response_prepare.append(middlewares.on_response_prepare)
    health.setup(app)
    return app
