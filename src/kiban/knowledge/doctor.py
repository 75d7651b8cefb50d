"""``kiban doctor`` check for knowledge: which embedder is active, that it embeds, what waits."""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncSession

from kiban.core.doctor import DoctorContext, Finding, doctor_check
from kiban.knowledge.embedding import embedder_from_settings
from kiban.knowledge.vectors import count_pending
from kiban.settings import ConfigurationError


@doctor_check
async def check_embedder(ctx: DoctorContext) -> list[Finding]:
    """Embedder for dense retrieval."""
    try:
        embedder = embedder_from_settings(ctx.settings)
    except ConfigurationError as e:
        return [Finding("fail", "the embedder is misconfigured", str(e), "see docs/knowledge.md")]
    if embedder is None:
        return [
            Finding(
                "ok",
                "no embedder (KIBAN_EMBEDDER=none): retrieval is BM25 only",
                "",
                "KIBAN_EMBEDDER=local runs multilingual-e5-small in process",
            )
        ]
    findings: list[Finding] = []
    try:
        started = time.perf_counter()
        vector = (await embedder.embed(["kiban doctor: 埋め込みの確認"], "query"))[0]
        ms = (time.perf_counter() - started) * 1000
        findings.append(
            Finding(
                "ok",
                f"embedder: {embedder.description}",
                f"model {embedder.model}, {vector.shape[0]} dimensions, a probe in {ms:.0f} ms",
            )
        )
    except Exception as e:
        findings.append(
            Finding(
                "fail",
                f"embedder: {embedder.description} does not embed",
                f"{type(e).__name__}: {e}",
                "check KIBAN_EMBEDDING_BASE_URL / KIBAN_EMBEDDING_API_KEY, or KIBAN_EMBEDDER",
            )
        )
    finally:
        await embedder.aclose()
    try:
        async with ctx.engine.connect() as conn:
            session = AsyncSession(bind=conn)
            pending = await count_pending(session, embedder.model)
            await session.close()
        findings.append(
            Finding(
                "ok" if pending == 0 else "warn",
                f"{pending} chunks wait for a vector of {embedder.model}",
                "" if pending == 0 else "the server's background queue embeds them while it runs",
                "" if pending == 0 else "start the server, or run `kiban knowledge reembed`",
            )
        )
    except Exception as e:
        findings.append(Finding("warn", "could not count the chunks without vectors", str(e)))
    return findings
