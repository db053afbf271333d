"""Upstream over TLS: the system's CA bundle is trusted wherever the distribution keeps it, and an HTTP
proxy carries HTTPS and WebSocket calls in CONNECT tunnels."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from codexlb.sim.app import create_sim_app
from codexlb.sim.backend import Backend, SimConfig
from codexlb.sim.running import RunningSim
from codexlb.upstream import tls
from tests.proxy.conftest import start_proxy
from tests.proxy.test_codex_route import post
from tests.simclient import body, user, ws_turn


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
                 *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture
def upstream_tls(tmp_path, monkeypatch):
    """A CA of our own (its bundle at a path of the candidates list, the default OpenSSL paths not knowing it)
    and a server context for 127.0.0.1 signed by it."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("codexlb test CA", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "codexlb test CA")]),
                      ca_key, ca=True)
    server = _certificate("127.0.0.1", server_key, ca.subject, ca_key, ca=False)
    (tmp_path / "ca-bundle.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem")
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    tls.client_context.cache_clear()
    yield context, str(tmp_path / "ca-bundle.crt"), str(tmp_path / "missing.crt")
    tls.client_context.cache_clear()


def test_the_first_bundle_found_is_added_unless_the_operator_named_one(upstream_tls, monkeypatch):
    _, bundle, missing = upstream_tls
    monkeypatch.setattr(tls, "CA_FILES", (missing, bundle))
    assert tls.system_ca_file() == bundle
    assert tls.system_ca_file({"SSL_CERT_FILE": bundle}) is None
    assert tls.system_ca_file({"SSL_CERT_DIR": "/etc/ssl/certs"}) is None
    monkeypatch.setattr(tls, "CA_FILES", (missing,))
    assert tls.system_ca_file() is None


async def _tls_sim(aiohttp_server, server_context: ssl.SSLContext) -> RunningSim:
    backend = Backend(SimConfig())
    server = await aiohttp_server(create_sim_app(backend), ssl=server_context)
    sim = RunningSim(str(server.make_url("")).rstrip("/"), backend)
    assert sim.url.startswith("https://127.0.0.1:")
    return sim


@pytest.mark.parametrize("found", [True, False])
async def test_an_upstream_over_tls_is_trusted_through_the_bundle_found(upstream_tls, monkeypatch, aiohttp_server,
                                                                      settings, http, found):
    server_context, bundle, missing = upstream_tls
    monkeypatch.setattr(tls, "CA_FILES", (missing, bundle) if found else (missing,))
    sim = await _tls_sim(aiohttp_server, server_context)
    proxy = await start_proxy(aiohttp_server, settings, sim, failover_budget_s=5)
    resp, answer = await post(http, proxy, body(user("over TLS")))
    if found:
        assert resp.status == 200 and answer[-1]["type"] == "response.completed"
    else:
        # Not trusted, not reached: the client gets the retriable 502, the sim never saw a request.
        assert resp.status == 502 and answer["error"]["code"] == "upstream_unavailable"
        assert not sim.backend.records


@pytest.fixture
async def connect_proxy():
    """An HTTP proxy that only tunnels (CONNECT), noting each tunnel's target and Proxy-Authorization."""
    seen: list[tuple[str, str | None]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = dict(line.split(": ", 1) for line in header_lines if line)
        seen.append((f"{method} {target}", headers.get("Proxy-Authorization")))
        host, port = target.rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)

    server = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], seen
    server.close()
    await server.wait_closed()


async def test_https_and_wss_go_through_the_proxy_in_tunnels(upstream_tls, monkeypatch, aiohttp_server, settings,
                                                             http, connect_proxy):
    server_context, bundle, _ = upstream_tls
    monkeypatch.setattr(tls, "CA_FILES", (bundle,))
    sim = await _tls_sim(aiohttp_server, server_context)
    port, seen = connect_proxy
    proxy = await start_proxy(aiohttp_server, settings, sim, upstream_proxy=f"http://alice:s3cret@127.0.0.1:{port}")
    resp, events = await post(http, proxy, body(user("HTTPS through the proxy")))
    assert resp.status == 200 and events[-1]["type"] == "response.completed"
    async with http.ws_connect(f"{proxy.codex_base_url}/responses", headers={"session_id": "conv-tunnel"}) as ws:
        assert (await ws_turn(ws, body(user("WebSocket through the proxy"))))[-1]["type"] == "response.completed"
    assert [r.transport for r in sim.backend.records] == ["http", "ws"]
    credentials = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert seen and set(seen) == {(f"CONNECT {sim.url.removeprefix('https://')}", credentials)}
