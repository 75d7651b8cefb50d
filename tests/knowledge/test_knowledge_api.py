"""The documents API end to end through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.knowledge import service
from kiban.models import Role, User
from kiban.models.knowledge import DocumentChunk
from tests.conftest import auth_headers, create_user, make_client
from tests.factories import upload
from tests.knowledge.conftest import search

REFUNDS = (
    "Refund policy\n\nRefunds are processed within 14 days of the request. "
    "Contact support with your invoice number.\n\n"
    "Annual plans can be refunded pro rata during the first month."
)
TSUYU = (
    "梅雨（つゆ、ばいう）は、北海道と小笠原諸島を除く日本で"
    "5月から7月にかけてみられる雨の多い期間である。"
)


async def test_upload_returns_201_with_counts(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await upload(client, user_headers, "refunds.md", REFUNDS)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["filename"] == "refunds.md"
    assert body["characters"] == len(REFUNDS)
    assert body["chunks"] >= 1
    assert body["duplicate"] is False
    uuid.UUID(body["document_id"])


async def test_japanese_encodings_are_searchable(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for name, encoding in (("a.txt", "cp932"), ("b.txt", "euc_jp"), ("c.txt", "utf-8-sig")):
        response = await upload(
            client, user_headers, name, TSUYU.replace("梅雨", f"梅雨{name}").encode(encoding)
        )
        assert response.status_code == 201, response.text
    found = await search(client, user_headers, "日本で梅雨がないのは北海道とどこか")
    assert len(found["results"]) == 3
    assert all(r["relevant"] for r in found["results"])


async def test_several_files_in_one_upload(
    client: httpx.AsyncClient, user_headers: dict[str, str], minimal_pdf: bytes
) -> None:
    response = await client.post(
        "/ai/upload",
        headers=user_headers,
        files=[
            ("files", ("guide.html", b"<p>Webhooks are signed.</p>", "text/html")),
            ("files", ("refunds.pdf", minimal_pdf, "application/pdf")),
            ("files", ("prices.csv", b"plan,price\npro,20\n", "text/csv")),
        ],
    )
    assert response.status_code == 201, response.text
    assert [d["filename"] for d in response.json()["documents"]] == [
        "guide.html",
        "refunds.pdf",
        "prices.csv",
    ]
    found = await search(client, user_headers, "How long do refunds take?")
    assert found["results"][0]["filename"] == "refunds.pdf"


async def test_upload_errors_have_codes(
    client: httpx.AsyncClient, user_headers: dict[str, str], make_settings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (await upload(client, user_headers, "tool.exe", b"MZ"), 415, "unsupported_media_type"),
        (await upload(client, user_headers, "empty.txt", b""), 422, "empty_document"),
        (
            await upload(client, user_headers, "blob.txt", bytes(range(256)) * 8),
            422,
            "undecodable_document",
        ),
        (await upload(client, user_headers, "bad.pdf", b"%PDF-1.4 nope"), 422, "unreadable_pdf"),
        (
            await upload(client, user_headers, "s.md", b"x", shared=True),
            403,
            "shared_requires_admin",
        ),
        (await client.post("/ai/upload", headers=user_headers, data={"x": "1"}), 422, "no_files"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]


async def test_too_large_file_is_413(make_settings, user: User) -> None:  # type: ignore[no-untyped-def]
    from kiban.app import create_app
    from tests.conftest import RunningApp

    settings = make_settings(knowledge_max_file_bytes=100)
    async with RunningApp(create_app(settings)) as app, make_client(app) as client:
        headers = auth_headers(app, user)
        response = await upload(client, headers, "big.txt", "a" * 101)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "file_too_large"
        assert (await upload(client, headers, "ok.txt", "a" * 100)).status_code == 201


async def test_reupload_does_not_duplicate_chunks(
    client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    first = (await upload(client, user_headers, "refunds.md", REFUNDS)).json()
    second = (await upload(client, user_headers, "refunds-copy.md", REFUNDS)).json()
    assert second["document_id"] == first["document_id"]
    assert second["duplicate"] is True
    count = await session.scalar(select(func.count()).select_from(DocumentChunk))
    assert count == first["chunks"]


async def test_list_get_and_delete(
    client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    document_id = (await upload(client, user_headers, "refunds.md", REFUNDS)).json()["document_id"]
    listed = (await client.get("/documents", headers=user_headers)).json()["documents"]
    assert [d["document_id"] for d in listed] == [document_id]
    detail = (await client.get(f"/documents/{document_id}", headers=user_headers)).json()
    assert detail["chunk_list"]
    for chunk in detail["chunk_list"]:
        assert REFUNDS[chunk["start"] : chunk["end"]] == chunk["text"]
    assert (await search(client, user_headers, "refund invoice"))["results"]

    response = await client.delete(f"/documents/{document_id}", headers=user_headers)
    assert response.status_code == 204
    assert (await search(client, user_headers, "refund invoice"))["results"] == []
    assert (await client.get(f"/documents/{document_id}", headers=user_headers)).status_code == 404
    assert await session.scalar(select(func.count()).select_from(DocumentChunk)) == 0
    # The term statistics are back to an empty corpus.
    rows = (await session.execute(text("SELECT term, df FROM knowledge_terms WHERE df <> 0"))).all()
    assert rows == []


async def test_private_documents_never_leak_to_other_users(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    document_id = (await upload(client, user_headers, "refunds.md", REFUNDS)).json()["document_id"]
    other = await create_user(session)
    other_headers = auth_headers(app, other)
    assert (await search(client, other_headers, "refunds processed within 14 days"))[
        "results"
    ] == []
    assert (await client.get("/documents", headers=other_headers)).json()["documents"] == []
    assert (await client.get(f"/documents/{document_id}", headers=other_headers)).status_code == 404
    assert (
        await client.delete(f"/documents/{document_id}", headers=other_headers)
    ).status_code == 404
    # The same content uploaded by the other user is their own document, not a duplicate of ours.
    theirs = (await upload(client, other_headers, "refunds.md", REFUNDS)).json()
    assert theirs["document_id"] != document_id
    assert theirs["duplicate"] is False
    retrieval = await service.retrieve(
        session, user_id=other.id, query="refunds processed within 14 days", top_k=50
    )
    assert {str(c.document_id) for c in retrieval.chunks} == {theirs["document_id"]}


async def test_shared_documents_reach_every_user(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: dict[str, str],
) -> None:
    response = await upload(client, admin_headers, "refunds.md", REFUNDS, shared=True)
    assert response.status_code == 201
    assert response.json()["shared"] is True
    found = await search(client, user_headers, "How many days until a refund is processed?")
    assert found["results"][0]["relevant"] is True
    listed = (await client.get("/documents", headers=user_headers)).json()["documents"]
    assert listed[0]["shared"] is True
    assert listed[0]["owned"] is False
    document_id = response.json()["document_id"]
    deleted = await client.delete(f"/documents/{document_id}", headers=user_headers)
    assert deleted.status_code == 403
    assert deleted.json()["error"]["code"] == "shared_document_read_only"


async def test_search_marks_relevance_against_the_threshold(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    await upload(client, user_headers, "refunds.md", REFUNDS)
    await upload(client, user_headers, "tsuyu.txt", TSUYU)
    hit = await search(client, user_headers, "How long does a refund take?")
    assert hit["results"][0]["filename"] == "refunds.md"
    assert hit["results"][0]["relevant"] is True
    assert hit["results"][0]["score"] >= hit["threshold"]
    assert set(hit["results"][0]) == {
        "document_id",
        "filename",
        "chunk_id",
        "score",
        "snippet",
        "relevant",
    }
    miss = await search(client, user_headers, "What is the capital of Australia?")
    assert not any(r["relevant"] for r in miss["results"])
    ja = await search(client, user_headers, "日本の梅雨の期間は何月から何月まで？")
    assert ja["results"][0]["filename"] == "tsuyu.txt"
    assert ja["results"][0]["relevant"]
    assert ja["threshold"] != hit["threshold"]  # Japanese queries have their own threshold


async def test_search_validates_top_k(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/documents/search", headers=user_headers, json={"query": "x", "top_k": 51}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    empty = await search(client, user_headers, "、。！")  # no terms at all
    assert empty["results"] == []


async def test_seed_is_idempotent_and_admin_only_outside_development(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str]
) -> None:
    denied = await client.post("/seed", headers=user_headers)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "seed_requires_admin"
    first = await client.post("/seed", headers=admin_headers)
    assert first.status_code == 200
    assert first.json()["created"] == len(first.json()["documents"]) >= 4
    again = (await client.post("/seed", headers=admin_headers)).json()
    assert again["created"] == 0
    found = await search(client, user_headers, "トークンの有効期限が切れたらどうすればいい？")
    assert found["results"][0]["filename"] == "api-errors-ja.md"
    assert found["results"][0]["relevant"]
    found = await search(client, user_headers, "What does No relevant information found mean?")
    assert found["results"][0]["filename"] == "kiban-overview.md"


async def test_seed_in_development_is_open_to_users(make_settings, user: User) -> None:  # type: ignore[no-untyped-def]
    from kiban.app import create_app
    from tests.conftest import RunningApp

    settings = make_settings(env="development")
    async with RunningApp(create_app(settings)) as app, make_client(app) as client:
        response = await client.post("/seed", headers=auth_headers(app, user))
        assert response.status_code == 200


async def test_concurrent_retrievals_and_uploads(app: FastAPI, user: User) -> None:
    async with make_client(app) as client:
        headers = auth_headers(app, user)
        uploads = [
            upload(client, headers, f"doc{i}.txt", f"{REFUNDS}\n\nDocument number {i}.")
            for i in range(4)
        ]
        results = await asyncio.gather(*uploads)
        assert all(r.status_code == 201 for r in results)

    async def one(query: str) -> int:
        async with app.state.sessionmaker() as session:
            retrieval = await service.retrieve(session, user_id=user.id, query=query, top_k=5)
            return len(retrieval.relevant)

    counts = await asyncio.gather(*(one("refund within 14 days") for _ in range(20)))
    assert all(c == 4 for c in counts)


async def test_admin_sees_and_deletes_any_document(
    app: FastAPI, client: httpx.AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    document_id = (await upload(client, user_headers, "refunds.md", REFUNDS)).json()["document_id"]
    admin = await create_user(session, role=Role.ADMIN)
    headers = auth_headers(app, admin)
    assert (await client.get(f"/documents/{document_id}", headers=headers)).status_code == 200
    assert (await client.delete(f"/documents/{document_id}", headers=headers)).status_code == 204


async def test_threshold_settings_move_the_line(make_settings, user: User) -> None:  # type: ignore[no-untyped-def]
    from kiban.app import create_app
    from tests.conftest import RunningApp

    question = "Who handles refund complaints about shipping?"  # shares one word with REFUNDS
    for threshold, expected in ((0.0, True), (0.99, False)):
        settings = make_settings(knowledge_relevance_threshold=threshold)
        async with RunningApp(create_app(settings)) as app, make_client(app) as client:
            headers = auth_headers(app, user)
            await upload(client, headers, "refunds.md", REFUNDS)
            found = await search(client, headers, question)
            assert found["threshold"] == threshold
            assert found["results"][0]["relevant"] is expected


async def test_threshold_settings_move_the_line_for_grounded_answers(
    make_settings, user: User
) -> None:  # type: ignore[no-untyped-def]
    from kiban.app import create_app
    from tests.conftest import RunningApp

    question = "Who handles refund complaints about shipping?"
    for threshold, expected in ((0.0, "ok"), (0.99, "no_context")):
        settings = make_settings(knowledge_relevance_threshold=threshold)
        async with RunningApp(create_app(settings)) as app, make_client(app) as client:
            headers = auth_headers(app, user)
            await upload(client, headers, "refunds.md", REFUNDS)
            answer = await client.post("/ai/test", headers=headers, json={"prompt": question})
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == expected


def _plans_with_document_limits(tmp_path, **limits: int):  # type: ignore[no-untyped-def]
    """The shipped plans file with the free plan's document limits replaced."""
    from importlib import resources

    text = resources.files("kiban.billing").joinpath("plans.toml").read_text()
    head, _, rest = text.partition("[plans.free.documents]\n")
    body, sep, tail = rest.partition("\n[")
    lines = dict(line.split(" = ") for line in body.strip().splitlines())
    lines.update({k: str(v) for k, v in limits.items()})
    table = "\n".join(f"{k} = {v}" for k, v in lines.items())
    path = tmp_path / "plans.toml"
    path.write_text(f"{head}[plans.free.documents]\n{table}\n{sep}{tail}")
    return path


async def test_plan_document_limits_are_enforced(make_settings, user: User, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kiban.app import create_app
    from tests.conftest import RunningApp

    plans = _plans_with_document_limits(
        tmp_path, max_documents=2, max_document_bytes=50, max_total_bytes=70
    )
    async with (
        RunningApp(create_app(make_settings(plans_file=plans))) as app,
        make_client(app) as client,
    ):
        headers = auth_headers(app, user)
        too_big = await upload(client, headers, "big.txt", "a" * 51)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["limit_bytes"] == 50

        assert (await upload(client, headers, "one.txt", "alpha " * 6)).status_code == 201
        # An identical re-upload is not a new document: it counts nothing.
        assert (await upload(client, headers, "copy.txt", "alpha " * 6)).status_code == 201
        over_total = await upload(client, headers, "two.txt", "bravo " * 7)  # 36 + 42 > 70
        assert over_total.status_code == 403
        assert over_total.json()["error"]["code"] == "document_quota_exceeded"
        second = await upload(client, headers, "two.txt", "bravo " * 5)
        assert second.status_code == 201, second.text
        over_count = await upload(client, headers, "three.txt", "c")
        assert over_count.status_code == 403
        assert over_count.json()["error"]["limit"] == 2

        listed = (await client.get("/documents", headers=headers)).json()
        assert len(listed["documents"] if "documents" in listed else listed["items"]) == 2
