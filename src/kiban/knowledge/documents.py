"""Documents: upload, list, read, delete, and the built-in sample set."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.billing import DocumentLimits
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
    limits: DocumentLimits | None = None,
) -> list[IndexedDocument]:
    """Parse every file first (one bad file fails the whole upload), then index them.

    Private uploads count against the plan's `limits` (shared ones are the operator's); an
    identical re-upload is not a new document and counts nothing. A refusal raises before the
    request commits, so nothing of the upload is kept.
    """
    if shared and not user.is_admin:
        raise exc.SharedRequiresAdmin()
    if not files:
        raise exc.NoFiles()
    if limits is not None and not shared:
        for f in files:
            if len(f.data) > limits.max_document_bytes:
                raise exc.FileTooLarge(
                    f"{f.filename!r} is larger than your plan's {limits.max_document_bytes} bytes.",
                    hint="Split the file, or upgrade your plan.",
                    extra={"limit_bytes": limits.max_document_bytes},
                )
        usage = await _private_usage(session, user)
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
                size_bytes=len(file.data),
            )
        )
        if limits is not None and not shared and results[-1].created:
            usage = (usage[0] + 1, usage[1] + len(file.data))
            _check_storage(usage, limits)
    return results


async def _private_usage(session: AsyncSession, user: User) -> tuple[int, int]:
    """How many private documents the user has, and their total bytes."""
    row = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(Document.size_bytes), 0)).where(
                Document.owner_id == user.id, Document.shared.is_(False)
            )
        )
    ).one()
    return int(row[0]), int(row[1])


def _check_storage(usage: tuple[int, int], limits: DocumentLimits) -> None:
    documents, total = usage
    if documents > limits.max_documents:
        raise exc.DocumentQuotaExceeded(
            f"Your plan allows {limits.max_documents} documents.",
            extra={"limit": limits.max_documents},
        )
    if total > limits.max_total_bytes:
        raise exc.DocumentQuotaExceeded(
            f"Your plan allows {limits.max_total_bytes} bytes of documents in all.",
            extra={"limit_bytes": limits.max_total_bytes},
        )


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


async def forget_owner(session: AsyncSession, owner_id: uuid.UUID) -> int:
    """Remove every document a user owns, with their chunks, vectors and share of the term
    statistics (before the user is deleted: a cascade alone would leave the statistics)."""
    result = await session.execute(select(Document).where(Document.owner_id == owner_id))
    owned = list(result.scalars())
    for document in owned:
        await remove_document(session, document)
    return len(owned)


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
