"""Request bodies over the limit get 413 before they are read, over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import pytest

from kiban.settings import Settings

MiB = 1024 * 1024


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        max_request_bytes=64 * 1024,
        knowledge_max_files=1,
        knowledge_max_file_bytes=1000,
        stripe_webhook_secret="whsec_test_limit",
    )


async def _raw_request(base_url: str, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    """Send a request by hand and read the reply (the server may answer before the body)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = asyncio.get_running_loop().time()
    writer.write(head + body)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(65536), 5)
    elapsed = asyncio.get_running_loop().time() - started
    writer.close()
    return reply, elapsed


async def test_an_upload_declared_too_large_is_refused_before_its_body_is_sent(
    served: str, app: object
) -> None:
    # It declares 10 GB and sends nothing: the 413 comes back at once, so nothing was read.
    head = (
        b"POST /ai/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 10000000000\r\nX-Request-ID: big-upload\r\n\r\n"
    )
    reply, _ = await _raw_request(served, head)
    status, _, rest = reply.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    body = orjson.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_too_large"
    assert body["error"]["limit_bytes"] == 1000 + MiB
    assert body["error"]["request_id"] == "big-upload"


async def test_a_chunked_body_is_cut_at_the_limit(
    served: str, app: object, user_headers: dict[str, str]
) -> None:
    # No Content-Length: the middleware counts the chunks as the app reads them and stops at
    # 64 KiB (sent by hand: clients do not read a reply while they are still sending).
    payload = b'{"prompt": "' + b"x" * 100 * 1024 + b'"}'
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (payload[i : i + 4096] for i in range(0, len(payload), 4096))
    )
    auth = user_headers["Authorization"].encode()
    head = (
        b"POST /ai/test HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nAuthorization: " + auth + b"\r\n\r\n"
    )
    reply, _ = await _raw_request(served, head, chunks + b"0\r\n\r\n")
    status, _, rest = reply.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large", reply[:300]
    body = orjson.loads(rest.partition(b"\r\n\r\n")[2])
    assert (body["error"]["code"], body["error"]["limit_bytes"]) == ("request_too_large", 65536)


async def test_a_webhook_body_over_a_mebibyte_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/billing/webhook",
        content=b"{" + b" " * (MiB + 1) + b"}",
        headers={"Stripe-Signature": "t=1,v1=00", "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["limit_bytes"] == MiB


async def test_bodies_under_the_limits_pass(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    r = await client.post(
        "/ai/upload", files={"file": ("a.txt", b"hello " * 100)}, headers=user_headers
    )
    assert r.status_code == 201, r.text
    r = await client.post("/ai/test", json={"prompt": "hello?"}, headers=user_headers)
    assert r.status_code == 200, r.text
