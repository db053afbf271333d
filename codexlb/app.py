"""The application factory: every route and middleware codexlb serves, in one place."""

from __future__ import annotations

from aiohttp import web

from codexlb import host_check, services
from codexlb.config import Settings
from codexlb.handlers import client_auth, dashboard, health, metrics, middlewares
from codexlb.handlers import proxy as proxy_routes
from codexlb.handlers import websocket as ws_route
from codexlb.handlers.api import admin as admin_api
from codexlb.handlers.api import accounts as accounts_api
from codexlb.handlers.api import bridge_stats as bridge_api
from codexlb.handlers.api import conversations as conversations_api
from codexlb.handlers.api import device_login as device_login_api
from codexlb.handlers.api import gates as gates_api
from codexlb.handlers.api import keys as keys_api
from codexlb.handlers.api import requests as requests_api
from codexlb.handlers.api import session as session_api
from codexlb.services import SETTINGS
from codexlb.trusted_proxies import TRUSTED_PROXIES, TrustedProxies

__all__ = ["SETTINGS", "create_app"]


def create_app(settings: Settings) -> web.Application:
    # Outermost first: every request is logged and gets OpenAI-shaped errors, the auth failures too; the
    # Host is checked before anyone's credentials are.
    hosts = host_check.middleware(any_host=client_auth.PROXY_PREFIXES + health.PREFIXES)
    app = web.Application(middlewares=[health.track, middlewares.access_log, middlewares.openai_errors, hosts,
                                       client_auth.client_auth, admin_api.shared_sessions])
    app[SETTINGS] = settings
    app[TRUSTED_PROXIES] = TrustedProxies(settings.trusted_proxies)
    app[host_check.ALLOWED_HOSTS] = host_check.AllowedHosts(settings.host, settings.allowed_hosts)
    app.on_response_prepare.append(middlewares.on_response_prepare)
    app.cleanup_ctx.append(services.services)
    health.setup(app)
    metrics.setup(app)
    accounts_api.setup(app)
    keys_api.setup(app)
    requests_api.setup(app)
    conversations_api.setup(app)
    session_api.setup(app)
    gates_api.setup(app)
    bridge_api.setup(app)
    device_login_api.setup(app)
    proxy_routes.setup(app)
    ws_route.setup(app)
    dashboard.setup(app)
    return app
