"""Grounded answers over uploaded documents, through the gateway's /ai/test, on both databases."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import auth_headers, create_user
from tests.factories import upload

REFUNDS = (
    "Refund policy\n\nRefunds are processed within 14 days of the request. "
    "Contact support with your invoice number."
)
JA = (
    "返金ポリシー\n\n返金は申請から14日以内に処理されます。"
    "請求書番号を添えてサポートへ連絡してください。"
)


async def ask(client: httpx.AsyncClient, headers: dict[str, str], prompt: str) -> dict:  # type: ignore[type-arg]
    response = await client.post("/ai/test", headers=headers, json={"prompt": prompt})
    assert response.status_code == 200, response.text
    body: dict = response.json()  # type: ignore[type-arg]
    return body


async def test_grounded_answer_cites_the_users_document(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    document_id = (await upload(client, user_headers, "refunds.md", REFUNDS)).json()["document_id"]
    await upload(client, user_headers, "refunds-ja.md", JA)
    answer = await ask(client, user_headers, "Within how many days are refunds processed?")
    assert answer["status"] == "ok"
    assert answer["sources"][0]["document_id"] == document_id
    assert answer["sources"][0]["filename"] == "refunds.md"
    ja = await ask(client, user_headers, "返金は何日以内に処理されますか？")
    assert ja["status"] == "ok"
    assert ja["sources"][0]["filename"] == "refunds-ja.md"


async def test_another_users_private_document_never_grounds_an_answer(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    await upload(client, user_headers, "refunds.md", REFUNDS)
    other = await create_user(session)
    answer = await ask(
        client, auth_headers(app, other), "How long does it take to process a refund?"
    )
    assert answer["status"] == "no_context"
    assert answer["result"] == "No relevant information found."
    assert answer["sources"] == []
    assert answer["usage"]["total_tokens"] == 0


async def test_out_of_corpus_question_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    await upload(client, user_headers, "refunds.md", REFUNDS)
    answer = await ask(client, user_headers, "Who painted the Mona Lisa?")
    assert answer["status"] == "no_context"
    assert answer["result"] == "No relevant information found."
