"""`kiban knowledge ...`: load the sample documents, ask the index from the shell."""

from __future__ import annotations

import asyncio
import uuid

import typer

from kiban.settings import Settings

knowledge_app = typer.Typer(help="Documents for grounded answers.", no_args_is_help=True)


@knowledge_app.command()
def seed() -> None:
    """Load the built-in sample documents as shared documents (idempotent)."""

    async def run() -> None:
        from kiban.core.db import create_engine, create_sessionmaker, session_scope
        from kiban.knowledge.documents import seed as seed_documents
        from kiban.knowledge.indexing import ChunkingOptions

        settings = Settings()
        engine = create_engine(settings.database_url)
        try:
            options = ChunkingOptions.from_settings(settings)
            async with session_scope(create_sessionmaker(engine)) as session:
                results = await seed_documents(session, options)
        finally:
            await engine.dispose()
        for result in results:
            state = "added" if result.created else "already there"
            typer.echo(f"{result.document.filename}: {result.document.chunk_count} chunks, {state}")

    asyncio.run(run())


@knowledge_app.command()
def search(
    query: str = typer.Argument(..., help="The question."),
    top_k: int = typer.Option(5, help="How many chunks."),
) -> None:
    """Show what retrieval finds for a question among the shared documents (scores, threshold)."""

    async def run() -> None:
        from kiban.core.db import create_engine, create_sessionmaker
        from kiban.knowledge import service

        settings = Settings()
        engine = create_engine(settings.database_url)
        retriever = service.retriever_from_settings(settings)  # hybrid when an embedder is set
        try:
            async with create_sessionmaker(engine)() as session:
                retrieval = await service.retrieve(
                    session, user_id=uuid.UUID(int=0), query=query, top_k=top_k, retriever=retriever
                )
        finally:
            await retriever.close()
            await engine.dispose()
        typer.echo(f"threshold {retrieval.threshold}")
        for chunk in retrieval.chunks:
            mark = "relevant" if chunk.relevant else "-"
            typer.echo(
                f"{chunk.score:.3f} {mark:8} {chunk.filename}#{chunk.chunk_id}: {chunk.snippet}"
            )
        if not retrieval.relevant:
            typer.echo("No relevant information found.")

    asyncio.run(run())


@knowledge_app.command()
def reindex() -> None:
    """Analyze every chunk again and rebuild the BM25 index and its statistics (after an
    analyzer change, or to repair statistics after rows were deleted outside kiban)."""

    async def run() -> None:
        from kiban.core.db import create_engine, create_sessionmaker, session_scope
        from kiban.knowledge.maintenance import reindex as rebuild

        engine = create_engine(Settings().database_url)
        try:
            async with session_scope(create_sessionmaker(engine)) as session:
                chunks = await rebuild(session)
        finally:
            await engine.dispose()
        typer.echo(f"{chunks} chunks analyzed again; full-text index and statistics rebuilt")

    asyncio.run(run())


@knowledge_app.command()
def reembed(
    force: bool = typer.Option(False, help="Embed every chunk again, even those with a vector."),
    keep_other_models: bool = typer.Option(
        False, help="Keep the vectors of other embedding models (default: drop them at the end)."
    ),
    bm25: bool = typer.Option(False, "--reindex", help="Also rebuild the BM25 index first."),
) -> None:
    """Give every chunk a vector of the active embedding model (KIBAN_EMBEDDER), e.g. after a
    model change; the server's queue does the same in the background, this waits for it."""

    async def run() -> None:
        from kiban.core.db import create_engine, create_sessionmaker, session_scope
        from kiban.knowledge.embedding import embedder_from_settings
        from kiban.knowledge.maintenance import reembed as embed_all
        from kiban.knowledge.maintenance import reindex as rebuild

        settings = Settings()
        embedder = embedder_from_settings(settings)
        engine = create_engine(settings.database_url)
        sessionmaker = create_sessionmaker(engine)
        try:
            if bm25:
                async with session_scope(sessionmaker) as session:
                    typer.echo(f"{await rebuild(session)} chunks analyzed again (BM25)")
            if embedder is None:
                typer.echo("KIBAN_EMBEDDER=none: no vectors to make")
                return
            typer.echo(f"embedding with {embedder.description}")
            done, dropped = await embed_all(
                sessionmaker,
                embedder,
                force=force,
                keep_other_models=keep_other_models,
                batch_size=settings.embedding_batch_size,
                progress=lambda d, t: typer.echo(f"  {d}/{t} chunks"),
            )
            typer.echo(f"{done} chunks embedded ({embedder.model}); {dropped} old vectors dropped")
        finally:
            if embedder is not None:
                await embedder.aclose()
            await engine.dispose()

    asyncio.run(run())
