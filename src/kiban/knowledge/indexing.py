"""Put a decoded document into the index, and take it out again.

The document's chunks are analyzed once here (in a worker thread: morphological analysis is
CPU-bound and would otherwise stall the event loop), stored with their terms, and indexed by the
database's own full-text engine through the triggers the knowledge migration installs. Term
statistics for BM25 are updated in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.knowledge.analyzer import analyze
from kiban.knowledge.chunking import DEFAULT_OVERLAP_CHARS, DEFAULT_TARGET_CHARS, chunk_text
from kiban.knowledge.search import update_term_stats
from kiban.knowledge.vectors import note_deleted_scope
from kiban.models.knowledge import SHARED_SCOPE, Document, DocumentChunk, owner_scope
from kiban.settings import Settings


@dataclass(frozen=True)
class ChunkingOptions:
    target_chars: int = DEFAULT_TARGET_CHARS
    overlap_chars: int = DEFAULT_OVERLAP_CHARS

    @classmethod
    def from_settings(cls, settings: Settings) -> ChunkingOptions:
        """The chunk size and overlap the operator configured."""
        return cls(settings.knowledge_chunk_chars, settings.knowledge_chunk_overlap_chars)


@dataclass(frozen=True)
class IndexedDocument:
    document: Document
    created: bool  # False: identical content was already indexed in this scope


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _prepare(
    text: str, title: str, options: ChunkingOptions
) -> list[tuple[int, int, int, str, list[str]]]:
    # The title is indexed with every chunk: a question often names the topic the document is
    # about, while the chunk that answers it only says "it".
    title_terms = analyze(title)
    prepared = []
    for chunk in chunk_text(
        text, target_chars=options.target_chars, overlap_chars=options.overlap_chars
    ):
        prepared.append(
            (chunk.ordinal, chunk.start, chunk.end, chunk.text, title_terms + analyze(chunk.text))
        )
    return prepared


def title_of(filename: str) -> str:
    """The words of a file name that may name its topic (no extension, separators as spaces)."""
    stem = filename.rsplit("/", 1)[-1]
    if "." in stem:
        stem = stem.rsplit(".", 1)[0]
    return stem.replace("_", " ").replace("-", " ")


async def index_document(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID | None,
    shared: bool,
    filename: str,
    content_type: str,
    encoding: str,
    text: str,
    options: ChunkingOptions | None = None,
    size_bytes: int | None = None,
) -> IndexedDocument:
    """Store and index `text` as a document, unless identical content is already in its scope.

    `size_bytes` is the uploaded file's size (default: the text's UTF-8 length).
    """
    options = options or ChunkingOptions()
    scope = SHARED_SCOPE if shared or owner_id is None else owner_scope(owner_id)
    digest = content_hash(text)
    dedupe_key = f"{scope}:{digest}"
    existing = await _by_dedupe_key(session, dedupe_key)
    if existing is not None:
        return IndexedDocument(existing, created=False)

    prepared = await asyncio.to_thread(_prepare, text, title_of(filename), options)
    document = Document(
        owner_id=owner_id,
        shared=scope == SHARED_SCOPE,
        filename=filename[:255],
        content_type=content_type,
        content_hash=digest,
        dedupe_key=dedupe_key,
        encoding=encoding,
        characters=len(text),
        size_bytes=len(text.encode("utf-8")) if size_bytes is None else size_bytes,
        chunk_count=len(prepared),
    )
    try:
        async with session.begin_nested():
            session.add(document)
            await session.flush()
            if prepared:
                await session.execute(
                    insert(DocumentChunk),
                    [
                        {
                            "document_id": document.id,
                            "ordinal": ordinal,
                            "start_offset": start,
                            "end_offset": end,
                            "text": chunk,
                            "terms": " ".join(terms),
                            "term_count": len(terms),
                            "scope": scope,
                        }
                        for ordinal, start, end, chunk, terms in prepared
                    ],
                )
                await update_term_stats(session, [terms for *_, terms in prepared])
    except IntegrityError:
        # The same content was indexed concurrently by another request: use that one.
        existing = await _by_dedupe_key(session, dedupe_key)
        if existing is None:
            raise
        return IndexedDocument(existing, created=False)
    return IndexedDocument(document, created=True)


async def _by_dedupe_key(session: AsyncSession, dedupe_key: str) -> Document | None:
    result = await session.execute(select(Document).where(Document.dedupe_key == dedupe_key))
    return result.scalar_one_or_none()


async def remove_document(session: AsyncSession, document: Document) -> None:
    """Delete a document with its chunks, index entries and vectors; update the term statistics."""
    # The vectors go with their chunks (ON DELETE CASCADE); the caches of this scope must know.
    await note_deleted_scope(session, document.scope)
    # Chunks first and explicitly: their delete trigger takes them out of the FTS5 index. Only the
    # chunks this statement deleted leave the statistics: a concurrent delete of the same document
    # waits on their rows (PostgreSQL), then deletes none and subtracts nothing.
    rows = await session.execute(
        delete(DocumentChunk)
        .where(DocumentChunk.document_id == document.id)
        .returning(DocumentChunk.terms)
    )
    await update_term_stats(session, [terms.split() for (terms,) in rows], sign=-1)
    await session.delete(document)
    await session.flush()
