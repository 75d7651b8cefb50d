"""A quality floor on real data (a JSQuAD slice): retrieval finds the paragraph, the gate refuses.

The full evaluation is bench/retrieval_eval.py; this guards against regressions on both databases.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from fastapi import FastAPI

from kiban.core.db import session_scope
from kiban.knowledge import service
from kiban.knowledge.indexing import index_document

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "jsquad_slice.json"


async def test_jsquad_slice_recall_and_refusal(app: FastAPI) -> None:
    articles = json.loads(FIXTURE.read_text(encoding="utf-8"))["data"]
    corpus, others = articles[0::2], articles[1::2]
    gold: dict[str, str] = {}  # paragraph text -> document id
    async with session_scope(app.state.sessionmaker) as session:
        for article in corpus:
            paragraphs = [p["context"].split(" [SEP] ", 1)[1] for p in article["paragraphs"]]
            result = await index_document(
                session,
                owner_id=None,
                shared=True,
                filename=f"{article['title']}.txt",
                content_type="text/plain",
                encoding="utf-8",
                text="\n\n".join(paragraphs),
            )
            for paragraph in paragraphs:
                gold[paragraph] = str(result.document.id)

    user = uuid.uuid4()
    hits = answered = asked = refused = out_of_corpus = 0
    async with app.state.sessionmaker() as session:
        for article in corpus:
            for paragraph in article["paragraphs"]:
                body = paragraph["context"].split(" [SEP] ", 1)[1]
                for qa in paragraph["qas"]:
                    asked += 1
                    retrieval = await service.retrieve(
                        session, user_id=user, query=qa["question"], top_k=5
                    )
                    hits += any(
                        str(c.document_id) == gold[body] and (c.text in body or body in c.text)
                        for c in retrieval.chunks
                    )
                    answered += bool(retrieval.relevant)
        for article in others:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    out_of_corpus += 1
                    retrieval = await service.retrieve(
                        session, user_id=user, query=qa["question"], top_k=5
                    )
                    refused += not retrieval.relevant
    assert hits / asked >= 0.9, f"recall@5 {hits / asked:.2f}"
    assert answered / asked >= 0.85, f"answered {answered / asked:.2f}"
    assert refused / out_of_corpus >= 0.8, f"refused {refused / out_of_corpus:.2f}"
