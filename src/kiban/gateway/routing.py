"""The router: which deployment answers a request, and what happens when one fails.

Every upstream model names its deployments (``kiban.gateway.deployments``). For each request the
router picks one by smooth weighted round-robin among those that are healthy (their breaker
closed, or half-open with no probe in flight: ``kiban.gateway.breaker``) and have room under
their concurrency cap, and makes one attempt through that deployment's provider. An attempt that
fails before any byte reached the client (refused, reset, a timeout, 429, 5xx; for a stream, a
failure before its first chunk) is failed over at once to the next deployment; once every
deployment of the model has failed, the round is retried after a backoff (or exactly the
Retry-After a deployment asked for), ``upstream_max_retries`` times; then the model's
``fallbacks`` are tried the same way. All of it within one deadline
(``upstream_deadline_seconds``).

The breaker steers traffic, it never refuses a request by itself: when every deployment a
request could use is cooling down, the one whose cooldown ends first is tried anyway (so one
deployment behaves as it did before deployments existed). A request the upstream refused for its
content (400) fails at once, anywhere; bad credentials, an exhausted account or an unknown model
(401, 403, 429 ``insufficient_quota``, 404) skip that deployment for the rest of the request.

What the request went through is written on its ``Route`` (deployment, kind, attempts), which
the call's ledger record reads. Decision 0070.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, TypeVar

import structlog

from kiban.core.metrics import (
    DEPLOYMENT_ATTEMPTS,
    DEPLOYMENT_LATENCY,
    UPSTREAM_ERRORS,
    UPSTREAM_RETRIES,
    child,
)
from kiban.gateway.breaker import Health
from kiban.gateway.catalog import Catalog, ModelSpec
from kiban.gateway.deployments import Deployment
from kiban.gateway.exceptions import (
    InvalidRequest,
    UpstreamError,
    UpstreamFailure,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from kiban.gateway.providers.base import (
    Completion,
    CompletionStream,
    Provider,
    ProviderRequest,
    StreamChunk,
)
from kiban.gateway.providers.http import UpstreamPools
from kiban.gateway.providers.registry import build_provider
from kiban.settings import Settings

log = structlog.get_logger("kiban.gateway.routing")
T = TypeVar("T")
_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class Disposition(Enum):
    RETRY = "retry"  # this deployment may be tried again, and the others now
    NEXT = "next"  # not this deployment again in this request; the others may answer
    FINAL = "final"  # the answer to the request, whichever deployment is asked


def classify(error: UpstreamFailure | InvalidRequest) -> tuple[Disposition, bool]:
    """What one failed attempt means: what to do next, and whether it counts against the
    deployment's breaker (False: the deployment answered, it is alive)."""
    if isinstance(error, InvalidRequest):
        return Disposition.FINAL, False
    if isinstance(error, UpstreamTimeout | UpstreamUnavailable):
        return Disposition.RETRY, True
    status = error.upstream_status
    if status is None:  # an answer kiban cannot read
        return Disposition.FINAL, True
    if status in _RETRYABLE_STATUS and not (status == 429 and isinstance(error, UpstreamError)):
        return Disposition.RETRY, True
    if status == 404:  # this deployment does not serve the model; it is fine otherwise
        return Disposition.NEXT, False
    return Disposition.NEXT, True  # 401, 403, 429 insufficient_quota, other statuses


def _outcome(error: UpstreamFailure | InvalidRequest) -> str:
    if isinstance(error, InvalidRequest):
        return "rejected"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamUnavailable):
        return "unavailable"
    return "error"


class _Failed(Exception):
    def __init__(self, error: UpstreamFailure | InvalidRequest, disposition: Disposition) -> None:
        super().__init__(error.message)
        self.error = error
        self.disposition = disposition


class _BeforeFirstChunk(Exception):
    """A stream that opened but failed before its first chunk: nothing reached the client."""

    def __init__(self, error: UpstreamFailure) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Member:
    """A deployment in the router: its provider, its health, its place in the rotation."""

    deployment: Deployment
    provider: Provider
    health: Health
    current: float = 0.0  # smooth weighted round-robin

    @property
    def name(self) -> str:
        return self.deployment.name


Attempt = Callable[[Member, ProviderRequest], Awaitable[T]]


class Router:
    """Chat completions routed over the catalog's deployments (a ``Provider`` itself)."""

    name = "router"

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        pools: UpstreamPools | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self._sleep = sleep
        self.pools = pools or UpstreamPools(settings)
        self.members = {
            name: Member(
                deployment,
                build_provider(settings, deployment, self.pools),
                Health(
                    name,
                    max_concurrency=deployment.max_concurrency,
                    failures_to_open=settings.upstream_breaker_failures,
                    cooldown=settings.upstream_cooldown_seconds,
                    cooldown_max=settings.upstream_cooldown_max_seconds,
                    clock=clock,
                ),
            )
            for name, deployment in catalog.deployments.items()
        }
        self._room: list[asyncio.Future[None]] = []  # requests waiting for a deployment's room

    async def aclose(self) -> None:
        for member in self.members.values():
            await member.provider.aclose()
        await self.pools.aclose()

    # --- the interface -------------------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        """One chat completion, from the first deployment that answers."""

        async def attempt(member: Member, ask: ProviderRequest) -> Completion:
            return await member.provider.complete(ask)

        return await self._route(request, attempt, holds=False)

    async def stream(self, request: ProviderRequest) -> CompletionStream:
        """A stream whose first chunk has arrived (failures before it are failed over)."""
        return await self._route(request, _open_stream, holds=True)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each deployment's health, for the dashboard."""
        rows = []
        for member in self.members.values():
            health, deployment = member.health, member.deployment
            state = health.state
            rows.append(
                {
                    "name": member.name,
                    "kind": deployment.kind,
                    "base_url": deployment.base_url,
                    "weight": deployment.weight,
                    "max_concurrency": deployment.max_concurrency,
                    "state": state.name.lower().replace("_", "-"),
                    "in_flight": health.in_flight,
                    "failures_in_a_row": health.failures,
                    "cooldown_left_s": round(max(0.0, health.open_until - health.clock()), 1)
                    if health.open
                    else 0.0,
                }
            )
        return rows

    # --- routing -------------------------------------------------------------------------------

    async def _route(self, request: ProviderRequest, attempt: Attempt[T], *, holds: bool) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.upstream_deadline_seconds
        chain = [request.model] + [self.catalog.models[name] for name in request.model.fallbacks]
        excluded: set[str] = set()  # deployments this request will not ask again
        last: UpstreamFailure | None = None
        for index, spec in enumerate(chain):
            if not [d for d in spec.deployments if d not in excluded]:
                continue
            if index:
                log.warning("upstream_fallback", model=request.model.name, fallback=spec.name)
                UPSTREAM_RETRIES.labels(self._kind(spec), "fallback").inc()
            ask = request if index == 0 else replace(request, model=spec)
            # Cooling-down deployments are a last resort only when no later model has a healthy one.
            later = [d for s in chain[index + 1 :] for d in s.deployments if d not in excluded]
            last_resort = not any(self.members[d].health.available() for d in later)
            for retry in range(self.settings.upstream_max_retries + 1):
                tried: set[str] = set()
                waits: list[float | None] = []
                while True:
                    pool = [
                        self.members[d]
                        for d in spec.deployments
                        if d not in excluded and d not in tried
                    ]
                    if not pool:
                        break
                    member = await self._choose(pool, deadline, last_resort=last_resort)
                    if member is None:
                        break
                    if loop.time() >= deadline:
                        raise last or UpstreamTimeout()
                    tried.add(member.name)
                    try:
                        return await self._attempt(member, ask, attempt, deadline, holds=holds)
                    except _Failed as failed:
                        if failed.disposition is Disposition.FINAL or not isinstance(
                            failed.error, UpstreamFailure
                        ):
                            raise failed.error from None
                        last = failed.error
                        if failed.disposition is Disposition.NEXT:
                            excluded.add(member.name)
                        waits.append(last.wait)
                        log.info(
                            "upstream_attempt_failed",
                            model=spec.name,
                            deployment=member.name,
                            reason=last.code,
                            upstream_status=last.upstream_status,
                        )
                        if len(pool) > 1:
                            UPSTREAM_RETRIES.labels(member.deployment.kind, "failover").inc()
                if not tried or retry == self.settings.upstream_max_retries:
                    break
                if all(d in excluded for d in spec.deployments):
                    break
                assert last is not None
                delay = min(self._backoff(retry, wait) for wait in waits)
                if loop.time() + delay >= deadline:
                    raise last from None
                UPSTREAM_RETRIES.labels(self._kind(spec), last.code).inc()
                log.info(
                    "upstream_retry",
                    model=spec.name,
                    attempt=retry + 1,
                    wait_s=round(delay, 3),
                    reason=last.code,
                )
                await self._sleep(delay)
        raise last or UpstreamUnavailable()

    async def _choose(
        self, pool: list[Member], deadline: float, *, last_resort: bool
    ) -> Member | None:
        """The next deployment to ask (None: all are cooling down and a fallback is healthy)."""
        while True:
            usable = [m for m in pool if m.health.available()]
            if not usable:
                if not last_resort:
                    return None
                usable = [min(pool, key=lambda m: m.health.open_until)]
            roomy = [m for m in usable if m.health.has_room()]
            if roomy:
                return _weighted(roomy)
            await self._wait_for_room(deadline)

    async def _attempt(
        self,
        member: Member,
        ask: ProviderRequest,
        attempt: Attempt[T],
        deadline: float,
        *,
        holds: bool,
    ) -> T:
        """One attempt on one deployment, its outcome told to the breaker and the metrics."""
        loop = asyncio.get_running_loop()
        health, name = member.health, member.name
        route = ask.route
        route.attempts += 1
        route.deployment, route.kind = name, member.deployment.kind
        route.model_id = member.deployment.model_id(ask.model.upstream_model)
        began = health.clock()
        probe = health.begin()
        started = time.perf_counter()
        error: UpstreamFailure | InvalidRequest
        disposition: Disposition | None = None
        held = False
        try:
            async with asyncio.timeout(deadline - loop.time()):
                result = await attempt(member, ask)
        except TimeoutError:
            UPSTREAM_ERRORS.labels(member.deployment.kind, "timeout").inc()
            error = UpstreamTimeout()
        except _BeforeFirstChunk as exc:
            error, disposition = exc.error, Disposition.RETRY
        except (UpstreamFailure, InvalidRequest) as exc:
            error = exc
        except BaseException:
            if probe:
                health.probing = False  # not judged: cancelled, or a bug
            raise
        else:
            child(DEPLOYMENT_LATENCY, name).observe(time.perf_counter() - started)
            child(DEPLOYMENT_ATTEMPTS, name, "ok").inc()
            if holds and isinstance(result, CompletionStream):
                self._hold(member, result, probe, began)  # judged when the stream ends
                held = True
            else:
                health.succeeded(probe)
            return result
        finally:
            if not held:
                health.release()
                self._wake()
        child(DEPLOYMENT_LATENCY, name).observe(time.perf_counter() - started)
        outcome = "cut" if disposition is not None else _outcome(error)
        child(DEPLOYMENT_ATTEMPTS, name, outcome).inc()
        decided, counts = classify(error)
        disposition = disposition or decided
        if counts:
            wait = error.wait if isinstance(error, UpstreamFailure) else None
            health.failed(probe, wait, began)
        else:
            health.succeeded(probe)
        raise _Failed(error, disposition)

    def _hold(self, member: Member, stream: CompletionStream, probe: bool, began: float) -> None:
        """Keep the deployment's slot until the stream is released, and tell its breaker how the
        stream ended (finished, or failed midway: it counts, though it cannot be failed over)."""
        health = member.health
        judged = done = False

        def judge(ok: bool) -> None:
            nonlocal judged
            judged = True
            if ok:
                health.succeeded(probe)
            else:
                health.failed(probe, None, began)

        if isinstance(stream.chunks, _Prepended):
            stream.chunks.judge = judge
        inner = stream.release

        async def release() -> None:
            nonlocal done
            try:
                if inner is not None:
                    await inner()
            finally:
                if not done:
                    done = True
                    if probe and not judged:  # the client left first: another request may probe
                        health.probing = False
                    health.release()
                    self._wake()

        stream.release = release

    async def _wait_for_room(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._room.append(waiter)
        try:
            async with asyncio.timeout(deadline - loop.time()):
                await waiter
        except TimeoutError:
            raise UpstreamUnavailable(
                "Every deployment of this model is at its concurrency cap.", retry_after=1
            ) from None
        finally:
            if waiter in self._room:
                self._room.remove(waiter)

    def _wake(self) -> None:
        waiters, self._room = self._room, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _backoff(self, retry: int, wait: float | None) -> float:
        """Exponential backoff with jitter, or exactly what the upstream asked for."""
        if wait is not None:
            return float(wait)
        ceiling = min(
            self.settings.upstream_backoff_max_seconds,
            self.settings.upstream_backoff_seconds * 2.0**retry,
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _kind(self, spec: ModelSpec) -> str:
        return self.members[spec.deployments[0]].deployment.kind


def _weighted(members: list[Member]) -> Member:
    """Smooth weighted round-robin (nginx's): shares proportional to weight, evenly interleaved."""
    if len(members) == 1:
        return members[0]
    total = 0.0
    best = members[0]
    for member in members:
        member.current += member.deployment.weight
        total += member.deployment.weight
        if member.current > best.current:
            best = member
    best.current -= total
    return best


async def _open_stream(member: Member, ask: ProviderRequest) -> CompletionStream:
    """Open a stream and wait for its first chunk, so that a failure before it can fail over."""
    stream = await member.provider.stream(ask)
    chunks = aiter(stream.chunks)
    try:
        first = await anext(chunks, None)
    except UpstreamFailure as exc:
        await _close_quietly(stream)
        raise _BeforeFirstChunk(exc) from exc
    except BaseException:
        await _close_quietly(stream)
        raise
    stream.chunks = _Prepended(first, chunks)
    return stream


async def _close_quietly(stream: CompletionStream) -> None:
    try:
        await stream.aclose()
    except Exception:  # the attempt's own error is the one to report
        log.debug("stream_close_failed", exc_info=True)


class _Prepended:
    """A stream's chunks with the first one, already read, put back in front; ``judge`` hears
    once whether the stream ended well (True) or failed midway (False)."""

    def __init__(self, first: StreamChunk | None, rest: AsyncIterator[StreamChunk]) -> None:
        self._first = first
        self._rest = rest
        self.judge: Callable[[bool], None] | None = None

    def _verdict(self, ok: bool) -> None:
        judge, self.judge = self.judge, None
        if judge is not None:
            judge(ok)

    def __aiter__(self) -> _Prepended:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            return await anext(self._rest)
        except StopAsyncIteration:
            self._verdict(True)
            raise
        except UpstreamFailure:
            self._verdict(False)
            raise

    async def aclose(self) -> None:
        close = getattr(self._rest, "aclose", None)
        if close is not None:
            await close()
