"""The embedding queue: chunks without a vector for the active model, embedded in the background.

There is no queue table to lose: the queue *is* the set of chunks that have no vector of the
active model (``vectors.pending_chunks``). An upload stores its chunks and returns; this process's
task is woken after the upload commits and embeds them, batch by batch, each batch in its own
short transaction (the model runs outside any transaction). At start-up, and every
``KIBAN_EMBEDDING_POLL_SECONDS``, the task looks again, so chunks stored by another process, by a
process that crashed before embedding them, or before an embedder was configured, are embedded
too. Two processes may embed the same chunk at once: the second insert is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kiban.core.db import session_scope
from kiban.knowledge.embedding import Embedder, EmbeddingUnavailable
from kiban.knowledge.indexing import title_of
from kiban.knowledge.vectors import PendingChunk, pending_chunks, store_vectors
from kiban.models.knowledge import DocumentChunk

log = structlog.get_logger("kiban.knowledge")


def passage_text(chunk: PendingChunk) -> str:
    """What is embedded for a chunk: its document's title, then its text (as BM25 indexes it)."""
    title = title_of(chunk.filename).strip()
    return f"{title}\n{chunk.text}" if title else chunk.text


async def embed_pending(
    sessionmaker: async_sessionmaker[AsyncSession],
    embedder: Embedder,
    *,
    batch_size: int = 16,
    limit: int | None = None,
) -> int:
    """Embed chunks that have no vector of the embedder's model; how many were stored."""
    stored = 0
    after = 0
    while limit is None or stored < limit:
        async with sessionmaker() as session:
            batch = await pending_chunks(session, embedder.model, batch_size, after)
        if not batch:
            break
        after = batch[-1].id
        vectors = await embedder.embed([passage_text(c) for c in batch], "passage")
        try:
            async with session_scope(sessionmaker) as session:
                alive = await _existing(session, [c.id for c in batch])
                await store_vectors(
                    session,
                    embedder.model,
                    [(c.id, c.scope, vectors[i]) for i, c in enumerate(batch) if c.id in alive],
                )
        except IntegrityError:  # a chunk was deleted meanwhile (PostgreSQL): the next pass
            continue
        stored += len(batch)
    return stored


async def _existing(session: AsyncSession, ids: list[int]) -> set[int]:
    rows = await session.execute(select(DocumentChunk.id).where(DocumentChunk.id.in_(ids)))
    return {int(i) for (i,) in rows}


class EmbeddingQueue:
    """The background task that keeps every chunk embedded by the active model."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        *,
        batch_size: int = 16,
        poll_seconds: float = 5.0,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.embedder = embedder
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start draining (at once: whatever start-up finds pending goes first)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kiban-embedding-queue")

    def notify(self) -> None:
        """New chunks were committed: look now rather than at the next poll."""
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Until a pass found nothing left to embed (tests, scripts: bound it with a timeout)."""
        await self._idle.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            started = time.perf_counter()
            try:
                stored = await embed_pending(
                    self.sessionmaker, self.embedder, batch_size=self.batch_size
                )
            except asyncio.CancelledError:
                raise
            except EmbeddingUnavailable as e:
                log.warning("embedding_unavailable", error=str(e), retry_in=self.poll_seconds)
                stored = -1
            except Exception:
                log.exception("embedding_queue_failed", retry_in=self.poll_seconds)
                stored = -1
            if stored > 0:
                log.info(
                    "chunks_embedded",
                    chunks=stored,
                    model=self.embedder.model,
                    seconds=round(time.perf_counter() - started, 2),
                )
            if stored > 0:
                continue  # look again at once: more may have arrived while this pass ran
            if stored == 0 and not self._wake.is_set():
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
