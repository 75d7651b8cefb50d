"""Connection pools to the upstreams: one ``aiohttp`` session per base URL.

aiohttp rather than the ``openai`` SDK's httpx: behind the same raw ASGI app on one 2-core
machine, one pooled aiohttp client forwarded 5,357 requests/s and httpx 422 (the floor apps in
``bench/``; decision 0067). A session per base URL keeps each upstream's keep-alive connections
apart, so a slow or saturated one cannot starve another's pool.

Timeouts are per socket operation, as OpenAI's own client does it: ``connect`` to open a
connection, ``read`` between two reads (a stream may run for minutes, but may not go silent for
longer than that). The total of all attempts is the caller's deadline, not the pool's.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from kiban.core import clock
from kiban.settings import Settings

# SSE lines are read whole; a long tool-call delta must not trip aiohttp's line limit (twice
# the read buffer).
_READ_BUFFER = 1 << 20


class UpstreamPools:
    """One lazily opened ``aiohttp.ClientSession`` per upstream base URL."""

    def __init__(self, settings: Settings) -> None:
        self._limit = settings.upstream_max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.upstream_connect_timeout_seconds,
            sock_read=settings.upstream_timeout_seconds,
        )
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, base_url: str) -> aiohttp.ClientSession:
        """The pool for ``base_url`` (opened on first use: a session belongs to a running loop)."""
        session = self._sessions.get(base_url)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                base_url=None,
                connector=aiohttp.TCPConnector(
                    limit=self._limit, limit_per_host=self._limit, enable_cleanup_closed=True
                ),
                timeout=self._timeout,
                read_bufsize=_READ_BUFFER,
                # The body is bytes we built; the answer is read raw. No cookies between users.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
                # HTTPS_PROXY / NO_PROXY, read once here rather than on every request.
                proxy=_env_proxy(base_url),
            )
            self._sessions[base_url] = session
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment names for ``base_url`` (``None``: connect directly)."""
    url = urlsplit(base_url)
    if url.hostname and urllib.request.proxy_bypass(url.hostname):
        return None
    return urllib.request.getproxies().get(url.scheme)


# --- what every provider does with a response -------------------------------------------------

DRAIN_SECONDS = 1.0


async def drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows a stream's last event (the body's end), so the connection can be
    reused; an upstream that keeps the body open after it is not waited for."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await response.content.read()
    except (TimeoutError, aiohttp.ClientError):
        response.close()


def releaser(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    """A stream's ``release``: the connection back to the pool if its body was read to the end,
    else closed."""

    async def release() -> None:
        response.release()

    return release


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - clock.now()).total_seconds())
        except (TypeError, ValueError):
            return None
