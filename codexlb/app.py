"""The application factory: every route and middleware codexlb serves, in one place."""

from __future__ import annotations

from aiohttp import web

from codexlb import health, middlewares, services
from codexlb.api import accounts as accounts_api
from codexlb.config import Settings
from codexlb.services import SETTINGS

__all__ = ["SETTINGS", "create_app"]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[middlewares.access_log, middlewares.openai_errors])
    app[SETTINGS] = settings
    app.on_response_prepare.append(middlewares.on_response_prepare)
    app.cleanup_ctx.append(services.services)
    health.setup(app)
    accounts_api.setup(app)
    return app
