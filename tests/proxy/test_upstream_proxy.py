"""Upstream calls through an HTTP proxy: chosen from `upstream_proxy` or the environment, once, for all of upstream."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from codexlb.config import ConfigError, load
from codexlb.upstream.proxy import Via, choose
from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import body, user

UPSTREAM = "https://chatgpt.com/backend-api"
AUTH = "https://auth.openai.com"
_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive", "transfer-encoding", "host",
        "content-length"}


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_the_environment_proxy_is_taken_with_its_credentials(no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "http://alice:s3cret@proxy.corp:3128")
    via = choose("", (UPSTREAM, AUTH))
    assert via == Via(URL("http://proxy.corp:3128"), "alice", "s3cret", "HTTPS_PROXY")


def test_no_proxy_and_this_machine_go_direct(no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    no_proxy_env.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    no_proxy_env.setenv("NO_PROXY", "chatgpt.com,.openai.com")
    assert choose("", (UPSTREAM, AUTH)).proxy is None
    # The sim on this machine is never reached through a proxy named by the environment.
    assert choose("", ("http://127.0.0.1:8080/backend-api", "http://localhost:8080")).proxy is None


def test_all_proxy_is_the_fallback_and_socks_is_ignored_with_a_reason(no_proxy_env):
    no_proxy_env.setenv("ALL_PROXY", "http://proxy.corp:3128")
    assert choose("", (UPSTREAM, AUTH)).proxy == URL("http://proxy.corp:3128")
    no_proxy_env.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    via = choose("", (UPSTREAM, AUTH))
    assert via.proxy is None and via.ignored.startswith("ALL_PROXY must be an http:// or https:// proxy URL")


def test_the_setting_wins_over_the_environment(no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    assert choose("direct", (UPSTREAM, AUTH)).proxy is None
    assert choose("http://other:8080", (UPSTREAM, AUTH)).proxy == URL("http://other:8080")
    # Explicit means every upstream call, this machine's included.
    assert choose("http://other:8080", ("http://127.0.0.1:1/backend-api",)).proxy == URL("http://other:8080")


def test_an_environment_that_splits_upstream_and_auth_is_refused(no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    no_proxy_env.setenv("NO_PROXY", "auth.openai.com")
    with pytest.raises(ValueError, match="different ways; set upstream_proxy"):
        choose("", (UPSTREAM, AUTH))


@pytest.mark.parametrize("value", ["socks5://127.0.0.1:1080", "proxy.corp:3128", "http://"])
def test_a_bad_proxy_setting_is_a_one_line_config_error(value, tmp_path):
    with pytest.raises(ConfigError, match="upstream_proxy"):
        load(flags={"upstream_proxy": value, "data_dir": str(tmp_path)}, env={})


@pytest.fixture
async def forwarding_proxy(aiohttp_server):
    """A plain HTTP forward proxy (absolute-form requests), noting each request and its Proxy-Authorization."""
    seen: list[tuple[str, str, str | None]] = []
    async with aiohttp.ClientSession(auto_decompress=False) as onward:

        async def forward(request: web.Request) -> web.StreamResponse:
            seen.append((request.method, str(request.url), request.headers.get("Proxy-Authorization")))
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            async with onward.request(request.method, request.url, headers=headers, data=await request.read()) as up:
                response = web.StreamResponse(status=up.status, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in _HOP})
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        server = await aiohttp_server(app)
        yield server.port, seen


async def test_requests_reach_upstream_through_the_proxy_with_its_credentials(aiohttp_server, settings, sim, http,
                                                                             forwarding_proxy):
    port, seen = forwarding_proxy
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_proxy=f"http://alice:s3cret@127.0.0.1:{port}")
    resp, events = await post(http, proxy, body(user("through the proxy")))
    assert resp.status == 200 and events[-1]["type"] == "response.completed"
    credentials = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert seen == [("POST", f"{sim.upstream_base_url}/codex/responses", credentials)]
    assert len(sim.backend.records) == 1
