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
        gate = service.gate_from_settings(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                retrieval = await service.retrieve(
                    session, user_id=uuid.UUID(int=0), query=query, top_k=top_k, gate=gate
                )
        finally:
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
