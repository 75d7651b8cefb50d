"""Request and response bodies of the knowledge API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class UploadedDocument(BaseModel):
    document_id: uuid.UUID
    filename: str
    chunks: int
    characters: int
    encoding: str
    shared: bool
    duplicate: bool = Field(description="identical content was already indexed: nothing was added")


class UploadResponse(UploadedDocument):
    """The first (or only) uploaded file at the top level; every file in `documents`."""

    documents: list[UploadedDocument]


class DocumentOut(BaseModel):
    document_id: uuid.UUID
    filename: str
    content_type: str
    encoding: str
    characters: int
    chunks: int
    shared: bool
    owned: bool = Field(description="the caller uploaded it")
    created_at: datetime
    embedded: bool = Field(
        description="every chunk has a vector of the active embedding model (false while the "
        "background queue works, and always when no embedder is configured)"
    )
    embedded_chunks: int = Field(description="chunks with a vector of the active model")


class ChunkOut(BaseModel):
    chunk_id: int
    ordinal: int
    start: int = Field(description="offset of the chunk's first character in the document's text")
    end: int
    text: str


class DocumentDetail(DocumentOut):
    chunk_list: list[ChunkOut] = Field(description="the chunks, in order, with their offsets")


class DocumentList(BaseModel):
    documents: list[DocumentOut]


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(default=5, ge=1, le=50)


class SearchResult(BaseModel):
    document_id: uuid.UUID
    filename: str
    chunk_id: int
    score: float = Field(description="relevance, 0..1; compare with `threshold`")
    snippet: str
    relevant: bool


class SearchResponse(BaseModel):
    results: list[SearchResult]
    threshold: float


class SeedResponse(BaseModel):
    documents: list[UploadedDocument]
    created: int
