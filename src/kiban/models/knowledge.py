"""Documents for grounded answers, their chunks, the term statistics BM25 needs, their vectors.

The full-text index itself is not a model: it is the database's own engine, created by the
knowledge migration (``knowledge_fts``: an FTS5 table on SQLite, a ``tsvector`` table with a GIN
index on PostgreSQL) and listed as unmanaged below so that ``alembic check`` leaves it alone.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kiban.core import clock
from kiban.models.base import Base, BigIntPK, new_uuid

Base.metadata.info.setdefault("unmanaged_tables", []).append("knowledge_fts")

SHARED_SCOPE = "shared"


def owner_scope(owner_id: uuid.UUID) -> str:
    """The scope of a user's private documents (a search sees its own scope and "shared")."""
    return "u" + owner_id.hex


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (Index("ix_documents_owner_id_created_at", "owner_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_uuid)
    # NULL for the built-in sample documents (`POST /seed`).
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), default=None
    )
    shared: Mapped[bool] = mapped_column(default=False)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    content_hash: Mapped[str] = mapped_column(String(64))
    # "<scope>:<content hash>": identical content uploaded again to one scope is not re-indexed.
    dedupe_key: Mapped[str] = mapped_column(String(120), unique=True)
    encoding: Mapped[str] = mapped_column(String(40))
    characters: Mapped[int] = mapped_column()
    # Bytes as uploaded: what the plan's storage limits count.
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    chunk_count: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=clock.now)

    @property
    def scope(self) -> str:
        if self.shared or self.owner_id is None:
            return SHARED_SCOPE
        return owner_scope(self.owner_id)


class DocumentChunk(Base):
    __tablename__ = "document_chunks"
    __table_args__ = (Index("ix_document_chunks_document_id_ordinal", "document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column()
    start_offset: Mapped[int] = mapped_column()
    end_offset: Mapped[int] = mapped_column()
    text: Mapped[str] = mapped_column(Text)
    # The analyzed terms, space-joined: what the full-text index holds for this chunk.
    terms: Mapped[str] = mapped_column(Text)
    term_count: Mapped[int] = mapped_column()
    # Who may retrieve it: "shared" or "u<owner hex>"; filtered inside the search query.
    scope: Mapped[str] = mapped_column(String(40))


class KnowledgeTerm(Base):
    """Document frequency of each indexed term (BM25's idf, the relevance gate's features).

    The row with the empty term holds the corpus totals: ``df`` chunks and ``cf`` terms.
    """

    __tablename__ = "knowledge_terms"

    term: Mapped[str] = mapped_column(String(255), primary_key=True)
    df: Mapped[int] = mapped_column(BigInteger, default=0)
    cf: Mapped[int] = mapped_column(BigInteger, default=0)


class ChunkVector(Base):
    """A chunk's embedding by one model: float32, little-endian, L2-normalized.

    One row per chunk and model, so a model change re-embeds without losing the old vectors
    until they are dropped. ``id`` grows with every insert: a process's cache of the shared
    vectors loads only the rows past the last one it saw (``KnowledgeVectorVersion``).
    """

    __tablename__ = "chunk_vectors"
    __table_args__ = (
        UniqueConstraint("chunk_id", "model"),
        Index("ix_chunk_vectors_model_scope_id", "model", "scope", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    chunk_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("document_chunks.id", ondelete="CASCADE")
    )
    model: Mapped[str] = mapped_column(String(120))
    # The chunk's scope, copied: search filters vectors by it in SQL, as it filters chunks.
    scope: Mapped[str] = mapped_column(String(40))
    dimensions: Mapped[int] = mapped_column()
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class KnowledgeVectorVersion(Base):
    """How many times the vectors of one model and scope changed (cache invalidation).

    ``version`` grows with every write, ``deletions`` with every delete: a cache at the same
    version is current; one at the same ``deletions`` only needs the rows with a larger id.
    """

    __tablename__ = "knowledge_vector_versions"

    model: Mapped[str] = mapped_column(String(120), primary_key=True)
    scope: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    deletions: Mapped[int] = mapped_column(BigInteger, default=0)
