"""Request bodies over the limit get 413 before they are read, over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from kiban.app import create_app
from kiban.core.body_limit import BodyLimitMiddleware
from kiban.settings import Settings
from tests.conftest import RunningApp, make_client

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


async def test_a_413_carries_cors_headers(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(cors_origins=["https://app.example"], max_request_bytes=2048)
    origin = {"Origin": "https://app.example"}
    async with RunningApp(create_app(settings)) as app, make_client(app) as client:
        r = await client.post("/ai/test", content=b"x" * 4096, headers=origin)
    assert r.status_code == 413
    assert r.headers["access-control-allow-origin"] == "https://app.example"


async def _through_limit(headers: list[tuple[bytes, bytes]], path: str, root: str = "") -> int:
    """Status of a 3,000-byte body sent in three chunks through the middleware alone, in front of
    an app that reads the whole body and answers 200."""
    chunks = [b"x" * 1000] * 3

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = BodyLimitMiddleware(app, default=1024, limits={"/ai/upload": 10_000})
    scope = {"type": "http", "method": "POST", "path": path, "root_path": root, "headers": headers}
    await middleware(scope, receive, send)
    return int(sent[0]["status"])


async def test_a_body_with_both_length_headers_is_counted() -> None:
    # Content-Length: 10 with Transfer-Encoding: chunked; a server that goes by the chunks (h11)
    # delivers all 3,000 bytes: they are counted, not trusted to the declared 10.
    both = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    assert await _through_limit(both, "/ai/test") == 413
    assert await _through_limit([(b"content-length", b"9" * 30)], "/ai/test") == 413


async def test_limits_by_path_hold_under_a_root_path() -> None:
    chunked = [(b"transfer-encoding", b"chunked")]
    assert await _through_limit(chunked, "/api/ai/upload", root="/api") == 200  # its 10,000
    assert await _through_limit(chunked, "/api/ai/test", root="/api") == 413  # the default 1,024
