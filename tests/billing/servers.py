"""Local servers for billing tests: localstripe, a Checkout/Portal stub, kiban on a real port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

STRIPE_KEY = "sk_test_kiban_localstripe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStripe:
    """The localstripe server (a stateful fake of Stripe's API) in a subprocess on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # --from-scratch: never load the state another run pickled into /tmp.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "localstripe", "--port", str(self.port), "--from-scratch"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"localstripe exited with {self._process.returncode}")
            try:
                httpx.get(f"{self.url}/v1/customers", headers=self.headers, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("localstripe did not start within 30 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {STRIPE_KEY}"}

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, expect: int = 200
    ) -> dict[str, Any]:
        """Drive Stripe's side directly (what Stripe's billing engine or a customer would do)."""
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers) as client:
            response = await client.post(path, data=data or {})
        if response.status_code != expect:
            raise AssertionError(f"localstripe {path}: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body

    async def get(self, path: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers) as client:
            response = await client.get(path)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def reset(self, webhook_url: str, secret: str) -> None:
        """Empty the store and deliver every event, signed with ``secret``, to ``webhook_url``."""
        async with httpx.AsyncClient(base_url=self.url) as client:
            (await client.delete("/_config/data")).raise_for_status()
            response = await client.post(
                "/_config/webhooks/kiban", data={"url": webhook_url, "secret": secret}
            )
            response.raise_for_status()


class CheckoutStub:
    """Stripe's Checkout and Portal session endpoints (which localstripe lacks); the rest of the
    API is forwarded to localstripe unchanged."""

    def __init__(self, upstream: str, prices: tuple[str, ...] = ()) -> None:
        self.upstream = upstream
        self.prices = prices
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/checkout/sessions", self.checkout, methods=["POST"]),
                Route("/v1/billing_portal/sessions", self.portal, methods=["POST"]),
                Route("/v1/prices/{price_id}", self.price, methods=["GET"]),
                Route("/{path:path}", self.forward, methods=["GET", "POST", "DELETE"]),
            ]
        )

    async def _record(self, request: Request, name: str) -> dict[str, str]:
        form = dict(parse_qsl((await request.body()).decode()))
        self.requests.append((name, form, dict(request.headers)))
        return form

    async def checkout(self, request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Bearer sk_"):
            return JSONResponse({"error": {"message": "No API key"}}, status_code=401)
        form = await self._record(request, "checkout")
        session_id = f"cs_test_{secrets.token_hex(12)}"
        return JSONResponse(
            {
                "id": session_id,
                "object": "checkout.session",
                "mode": form.get("mode"),
                "customer": form.get("customer"),
                "client_reference_id": form.get("client_reference_id"),
                "status": "open",
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            }
        )

    async def portal(self, request: Request) -> Response:
        form = await self._record(request, "portal")
        session_id = f"bps_{secrets.token_hex(12)}"
        return JSONResponse(
            {
                "id": session_id,
                "object": "billing_portal.session",
                "customer": form.get("customer"),
                "return_url": form.get("return_url"),
                "url": f"https://billing.stripe.com/p/session/{session_id}",
            }
        )

    async def price(self, request: Request) -> Response:
        price_id = request.path_params["price_id"]
        if price_id not in self.prices:
            error = {"type": "invalid_request_error", "code": "resource_missing"}
            error["message"] = f"No such price: '{price_id}'"
            return JSONResponse({"error": error}, status_code=404)
        return JSONResponse({"id": price_id, "object": "price", "active": True})

    async def forward(self, request: Request) -> Response:
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with httpx.AsyncClient(base_url=self.upstream) as client:
            upstream = await client.request(
                request.method,
                request.url.path,
                params=request.query_params.multi_items(),
                content=await request.body(),
                headers=headers,
            )
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )


class Served:
    """An ASGI app served by uvicorn on a free local port, in this event loop."""

    def __init__(self, app: FastAPI | Starlette) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Served:
        self._task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 20
        while not self.server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("the served app did not start")
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def eventually(check: Any, *, within: float = 30.0) -> Any:
    """Await ``check()`` until it returns something truthy (webhooks arrive asynchronously)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {within} s (last: {last!r})")
