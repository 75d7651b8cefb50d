"""Documents: upload, list, read, delete, and the built-in sample set."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.knowledge import exceptions as exc
from kiban.knowledge.indexing import (
    ChunkingOptions,
    IndexedDocument,
    index_document,
    remove_document,
)
from kiban.knowledge.parsing import parse
from kiban.models import User
from kiban.models.knowledge import Document, DocumentChunk


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content_type: str | None
    data: bytes


async def upload(
    session: AsyncSession,
    user: User,
    files: Sequence[UploadedFile],
    *,
    shared: bool = False,
    options: ChunkingOptions | None = None,
) -> list[IndexedDocument]:
    """Parse every file first (one bad file fails the whole upload), then index them."""
    if shared and not user.is_admin:
        raise exc.SharedRequiresAdmin()
    if not files:
        raise exc.NoFiles()
    # Decoding detection and PDF extraction are CPU-bound: off the event loop.
    parsed = [
        (f, await asyncio.to_thread(parse, f.data, f.filename, f.content_type)) for f in files
    ]
    results = []
    for file, document in parsed:
        results.append(
            await index_document(
                session,
                owner_id=user.id,
                shared=shared,
                filename=file.filename,
                content_type=document.content_type,
                encoding=document.encoding,
                text=document.text,
                options=options,
            )
        )
    return results


def _visible_to(user: User):  # type: ignore[no-untyped-def]
    return or_(Document.owner_id == user.id, Document.shared.is_(True))


async def list_documents(session: AsyncSession, user: User) -> list[Document]:
    """The user's own documents and the shared ones, newest first."""
    result = await session.execute(
        select(Document).where(_visible_to(user)).order_by(Document.created_at.desc(), Document.id)
    )
    return list(result.scalars())


async def get_document(session: AsyncSession, user: User, document_id: uuid.UUID) -> Document:
    """A document the user may see (own, shared; admins see all)."""
    document = await session.get(Document, document_id)
    if document is None or not (user.is_admin or document.shared or document.owner_id == user.id):
        raise exc.DocumentNotFound()
    return document


async def document_chunks(session: AsyncSession, document: Document) -> list[DocumentChunk]:
    """The document's chunks in order."""
    result = await session.execute(
        select(DocumentChunk)
        .where(DocumentChunk.document_id == document.id)
        .order_by(DocumentChunk.ordinal)
    )
    return list(result.scalars())


async def delete_document(session: AsyncSession, user: User, document_id: uuid.UUID) -> None:
    """Delete a document the user owns (admins: any), with its chunks and index entries."""
    document = await get_document(session, user, document_id)
    if not user.is_admin and document.owner_id != user.id:
        raise exc.SharedDocumentReadOnly()
    await remove_document(session, document)


SEED_PACKAGE = "kiban.knowledge.seed"


def seed_files() -> list[tuple[str, str]]:
    """The built-in sample documents: (filename, text)."""
    root = resources.files(SEED_PACKAGE)
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if entry.name.endswith(".md")
    )


async def seed(
    session: AsyncSession, options: ChunkingOptions | None = None
) -> list[IndexedDocument]:
    """Index the sample documents as shared documents (identical ones are not added twice)."""
    results = []
    for filename, text in seed_files():
        results.append(
            await index_document(
                session,
                owner_id=None,
                shared=True,
                filename=filename,
                content_type="text/markdown",
                encoding="utf-8",
                text=text.strip(),
                options=options,
            )
        )
    return results
