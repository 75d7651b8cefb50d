"""HTTP API for documents and search: upload, list, read, delete, seed, search."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, File, Form, Request, UploadFile, status

from kiban.auth import CurrentUser
from kiban.billing import PlanCatalogDep, grace, resolve_entitlement
from kiban.core import clock
from kiban.core.db import SessionDep
from kiban.core.dependencies import SettingsDep
from kiban.knowledge import documents, service
from kiban.knowledge import exceptions as exc
from kiban.knowledge.indexing import ChunkingOptions, IndexedDocument
from kiban.knowledge.schemas import (
    ChunkOut,
    DocumentDetail,
    DocumentList,
    DocumentOut,
    SearchRequest,
    SearchResponse,
    SearchResult,
    SeedResponse,
    UploadedDocument,
    UploadResponse,
)
from kiban.knowledge.vectors import embedded_counts
from kiban.models import User
from kiban.models.knowledge import Document

router = APIRouter(tags=["knowledge"])


def _uploaded(result: IndexedDocument) -> UploadedDocument:
    d = result.document
    return UploadedDocument(
        document_id=d.id,
        filename=d.filename,
        chunks=d.chunk_count,
        characters=d.characters,
        encoding=d.encoding,
        shared=d.shared,
        duplicate=not result.created,
    )


def _retriever(request: Request) -> service.Retriever:
    retriever: service.Retriever = request.app.state.retriever
    return retriever


def _out(document: Document, user: User, embedded: int | None = None) -> DocumentOut:
    return DocumentOut(
        document_id=document.id,
        filename=document.filename,
        content_type=document.content_type,
        encoding=document.encoding,
        characters=document.characters,
        chunks=document.chunk_count,
        shared=document.shared,
        owned=document.owner_id == user.id,
        created_at=document.created_at,
        embedded=embedded is not None and embedded >= document.chunk_count,
        embedded_chunks=embedded or 0,
    )


async def _embedded(
    session: SessionDep, request: Request, docs: list[Document]
) -> dict[object, int] | None:
    embedder = _retriever(request).embedder
    if embedder is None:
        return None
    return await embedded_counts(session, embedder.model, [d.id for d in docs])


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise exc.FileTooLarge(
            f"{upload.filename!r} is larger than {limit} bytes.",
            hint="Split the file, or raise KIBAN_KNOWLEDGE_MAX_FILE_BYTES.",
            extra={"limit_bytes": limit},
        )
    return data


@router.post("/ai/upload", status_code=status.HTTP_201_CREATED, response_model=UploadResponse)
async def upload_documents(
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    catalog: PlanCatalogDep,
    request: Request,
    background: BackgroundTasks,
    files: Annotated[list[UploadFile] | None, File(description="one or more files")] = None,
    file: Annotated[list[UploadFile] | None, File(description="alias of `files`")] = None,
    shared: Annotated[bool, Form(description="admins: usable by every user")] = False,
) -> UploadResponse:
    """Upload .txt, .md, .pdf, .html or .csv files to ground answers on (private unless shared)."""
    if shared and not user.is_admin:
        raise exc.SharedRequiresAdmin()
    uploads = [*(files or []), *(file or [])]
    if not uploads:
        raise exc.NoFiles()
    if len(uploads) > settings.knowledge_max_files:
        raise exc.FileTooLarge(
            f"At most {settings.knowledge_max_files} files per upload.",
            code="too_many_files",
        )
    received = [
        documents.UploadedFile(
            filename=u.filename or "upload.txt",
            content_type=u.content_type,
            data=await _read_limited(u, settings.knowledge_max_file_bytes),
        )
        for u in uploads
    ]
    entitlement = await resolve_entitlement(
        session, user, clock.now(), catalog=catalog, grace=grace(settings)
    )
    results = await documents.upload(
        session,
        user,
        received,
        shared=shared,
        options=ChunkingOptions.from_settings(settings),
        limits=entitlement.plan.documents,
    )
    items = [_uploaded(r) for r in results]
    # After the response, so after the commit: the queue then finds the new chunks at once.
    background.add_task(_retriever(request).notify)
    return UploadResponse(**items[0].model_dump(), documents=items)


@router.get("/documents", response_model=DocumentList)
async def list_documents(session: SessionDep, user: CurrentUser, request: Request) -> DocumentList:
    """Your documents and the shared ones, newest first, each saying whether it is embedded."""
    docs = await documents.list_documents(session, user)
    counts = await _embedded(session, request, docs)
    return DocumentList(
        documents=[_out(d, user, None if counts is None else counts.get(d.id, 0)) for d in docs]
    )


@router.get("/documents/{document_id}", response_model=DocumentDetail)
async def get_document(
    document_id: uuid.UUID, session: SessionDep, user: CurrentUser, request: Request
) -> DocumentDetail:
    """A document with its chunks and their offsets in the text."""
    document = await documents.get_document(session, user, document_id)
    chunks = await documents.document_chunks(session, document)
    counts = await _embedded(session, request, [document])
    return DocumentDetail(
        **_out(document, user, None if counts is None else counts.get(document.id, 0)).model_dump(),
        chunk_list=[
            ChunkOut(
                chunk_id=c.id,
                ordinal=c.ordinal,
                start=c.start_offset,
                end=c.end_offset,
                text=c.text,
            )
            for c in chunks
        ],
    )


@router.delete("/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(document_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> None:
    """Delete a document; it leaves the search index at once."""
    await documents.delete_document(session, user, document_id)


@router.post("/documents/search", response_model=SearchResponse)
async def search_documents(
    body: SearchRequest, session: SessionDep, user: CurrentUser, request: Request
) -> SearchResponse:
    """The ranked chunks grounded answers would use for `query`, each marked relevant or not."""
    retrieval = await service.retrieve(
        session,
        user_id=user.id,
        query=body.query,
        top_k=body.top_k,
        retriever=_retriever(request),
    )
    return SearchResponse(
        results=[
            SearchResult(
                document_id=c.document_id,
                filename=c.filename,
                chunk_id=c.chunk_id,
                score=c.score,
                snippet=c.snippet,
                relevant=c.relevant,
            )
            for c in retrieval.chunks
        ],
        threshold=retrieval.threshold,
    )


@router.post("/seed", response_model=SeedResponse)
async def seed_documents(
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    request: Request,
    background: BackgroundTasks,
) -> SeedResponse:
    """Load the built-in sample documents (shared; idempotent). Admin-only outside development."""
    if settings.env != "development" and not user.is_admin:
        raise exc.SeedRequiresAdmin()
    results = await documents.seed(session, ChunkingOptions.from_settings(settings))
    background.add_task(_retriever(request).notify)
    return SeedResponse(
        documents=[_uploaded(r) for r in results], created=sum(r.created for r in results)
    )
