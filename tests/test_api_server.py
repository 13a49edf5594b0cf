"""The HTTP server itself: TLS, CORS, and the routes both prefixes mount."""
from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess

import httpx
import pytest

from handlers.app import PREFIXES, ROUTES, Server
from handlers.openapi import path_template


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


async def test_tls_serves_https_and_marks_the_login_cookie_secure(config, db, admin, certificate):
    cert, key = certificate
    server = Server(dataclasses.replace(config, tls_cert=cert, tls_key=key), db)
    await server.start()
    try:
        assert server.url.startswith("https://")
        async with httpx.AsyncClient(base_url=server.url, verify=ssl.create_default_context(cafile=cert)) as http:
            assert (await http.get("/health")).status_code == 200
            login = await http.post("/login", auth=("admin", "hans"))
            assert "Secure" in login.headers["Set-Cookie"]
    finally:
        await server.stop()


@pytest.fixture
async def cors_client(config, db, admin):
    server = Server(dataclasses.replace(config, cors_origins=["https://ui.example"]), db)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url) as http:
        yield http
    await server.stop()


async def test_allowed_origin_gets_cors_headers(cors_client):
    reply = await cors_client.get("/whoami", auth=("admin", "hans"), headers={"Origin": "https://ui.example"})
    assert reply.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"


async def test_other_origins_get_no_cors_headers(cors_client):
    reply = await cors_client.get("/whoami", auth=("admin", "hans"), headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in reply.headers


async def test_preflight_is_answered_without_credentials(cors_client):
    reply = await cors_client.options("/whoami", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"})
    assert reply.status_code == 204
    assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("path", [path_template(path).replace("{id}", "5f6252b42e84fa29038a3e3f")
                                  for path, _ in ROUTES])
async def test_every_route_is_mounted_under_both_prefixes(client, prefix, path):
    reply = await client.get(f"http://127.0.0.1:{client.base_url.port}{prefix}{path}")
    assert reply.status_code != 404
