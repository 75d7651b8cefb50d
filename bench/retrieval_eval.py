"""Retrieval evaluation: recall, MRR, refusal of out-of-corpus questions, latency; scale test.

Runs the real knowledge code (analyzer, chunker, FTS index, ranking, relevance gate) on a real
SQLite file (or PostgreSQL with --postgres URL), over the data sets in ../shared/data (see its
README for the protocol): articles sorted by title and split alternately into halves A and B;
index A (one document per article, so chunking is exercised), ask A's questions (in-corpus) and
B's (out-of-corpus); then swap.

    .venv/bin/python bench/retrieval_eval.py             # JSQuAD + XQuAD, both swaps, 100k scale
    .venv/bin/python bench/retrieval_eval.py --scale 0   # skip the synthetic 100,000-chunk corpus

Each figure has a baseline measured in the same run on the same corpus: naive keyword matching
with SQL LIKE (English words, Japanese character bigrams), ranked by how many terms a chunk holds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.core.migrations import upgrade
from kiban.knowledge import service
from kiban.knowledge.analyzer import analyzer
from kiban.knowledge.gate import GateConfig
from kiban.knowledge.indexing import index_document
from kiban.knowledge.ranking import profile_query, rank, visible_scopes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SEP = " [SEP] "


@dataclass
class Article:
    title: str
    paragraphs: list[str]
    questions: list[tuple[str, int]]  # (question, paragraph index)


@dataclass
class SwapResult:
    name: str
    hits_at_1: int = 0
    hits_at_5: int = 0
    reciprocal_ranks: float = 0.0
    in_total: int = 0
    answered: int = 0
    out_total: int = 0
    refused: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # The baseline, measured in the same run on the same corpus: naive LIKE keyword matching.
    like_hits_at_1: int = 0
    like_hits_at_5: int = 0
    like_latencies_ms: list[float] = field(default_factory=list)
    chunks: int = 0
    index_seconds: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


def load(path: Path) -> list[Article]:
    articles = []
    for raw in json.loads(path.read_text(encoding="utf-8"))["data"]:
        paragraphs: list[str] = []
        questions: list[tuple[str, int]] = []
        for paragraph in raw["paragraphs"]:
            context = paragraph["context"]
            if SEP in context:  # JSQuAD: "title [SEP] text"; the title is the document's name
                context = context.split(SEP, 1)[1]
            for qa in paragraph["qas"]:
                questions.append((qa["question"], len(paragraphs)))
            paragraphs.append(context.strip())
        articles.append(Article(raw["title"], paragraphs, questions))
    return sorted(articles, key=lambda a: a.title)


async def fresh_database(postgres: str | None, workdir: Path) -> AsyncEngine:
    if postgres:
        from sqlalchemy.engine import make_url
        from sqlalchemy.ext.asyncio import create_async_engine

        name = f"kiban_eval_{uuid.uuid4().hex[:8]}"
        admin = create_async_engine(make_url(postgres), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()
        url = make_url(postgres).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite+aiosqlite:///{workdir / f'eval-{uuid.uuid4().hex[:8]}.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    return engine


async def drop_database(engine: AsyncEngine, postgres: str | None) -> None:
    name = engine.url.database
    await engine.dispose()
    if postgres:
        from sqlalchemy.engine import make_url
        from sqlalchemy.ext.asyncio import create_async_engine

        admin = create_async_engine(make_url(postgres), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def ingest(
    sessionmaker: async_sessionmaker[AsyncSession], corpus: list[Article], per_paragraph: bool
) -> dict[tuple[str, int], tuple[str, int, int]]:
    """Index the corpus as shared documents: one per article (or per paragraph).

    Returns where each (article title, paragraph index) landed: (document id, start, end).
    """
    gold: dict[tuple[str, int], tuple[str, int, int]] = {}
    for article in corpus:
        bodies: list[tuple[str, list[tuple[int, int, int]]]] = []
        if per_paragraph:
            for index, paragraph in enumerate(article.paragraphs):
                bodies.append((paragraph, [(index, 0, len(paragraph))]))
        else:
            body = ""
            offsets = []
            for index, paragraph in enumerate(article.paragraphs):
                if body:
                    body += "\n\n"
                offsets.append((index, len(body), len(body) + len(paragraph)))
                body += paragraph
            bodies.append((body, offsets))
        for body, offsets in bodies:
            async with session_scope(sessionmaker) as session:
                result = await index_document(
                    session,
                    owner_id=None,
                    shared=True,
                    filename=f"{article.title}.txt",
                    content_type="text/plain",
                    encoding="utf-8",
                    text=body,
                )
            for index, start, end in offsets:
                gold[(article.title, index)] = (str(result.document.id), start, end)
    return gold


async def evaluate_swap(
    name: str,
    corpus: list[Article],
    others: list[Article],
    gate: GateConfig,
    postgres: str | None,
    workdir: Path,
    per_paragraph: bool = False,
) -> SwapResult:
    result = SwapResult(name)
    engine = await fresh_database(postgres, workdir)
    sessionmaker = create_sessionmaker(engine)
    started = time.perf_counter()
    gold = await ingest(sessionmaker, corpus, per_paragraph)
    result.index_seconds = time.perf_counter() - started
    async with sessionmaker() as session:
        result.chunks = int(
            (await session.execute(text("SELECT count(*) FROM document_chunks"))).scalar_one()
        )
    user = uuid.uuid4()
    scopes = visible_scopes(user)
    async with sessionmaker() as session:
        for in_corpus, articles in ((True, corpus), (False, others)):
            for article in articles:
                for question, paragraph in article.questions:
                    started = time.perf_counter()
                    profile = await profile_query(session, question)
                    ranked = await rank(session, profile, scopes, 10)
                    decision = gate.decide(profile, ranked)
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                    relevant = any(decision)
                    if not in_corpus:
                        result.out_total += 1
                        result.refused += not relevant
                    else:
                        result.in_total += 1
                        result.answered += relevant
                        gold_doc, p_start, p_end = gold[(article.title, paragraph)]
                        position = next(
                            (
                                i
                                for i, c in enumerate(ranked)
                                if str(c.document_id) == gold_doc
                                and c.start_offset < p_end
                                and c.end_offset > p_start
                            ),
                            None,
                        )
                        if position is not None:
                            result.hits_at_1 += position == 0
                            result.hits_at_5 += position < 5
                            result.reciprocal_ranks += 1.0 / (position + 1)
                        started = time.perf_counter()
                        baseline = await like_rank(session, question, 5)
                        result.like_latencies_ms.append((time.perf_counter() - started) * 1000)
                        found = [
                            i
                            for i, row in enumerate(baseline)
                            if str(row.document_id).replace("-", "") == gold_doc.replace("-", "")
                            and row.start_offset < p_end
                            and row.end_offset > p_start
                        ]
                        result.like_hits_at_1 += bool(found) and found[0] == 0
                        result.like_hits_at_5 += bool(found)
                    result.records.append(gate.features(profile, ranked) | {"in": in_corpus})
    await drop_database(engine, postgres)
    return result


STOPWORDS = frozenset((
    "the", "and", "for", "are", "was", "were", "what", "which", "who", "whom", "whose", "how",
    "when", "where", "why", "did", "does", "with", "from", "that", "this", "into", "its", "than",
    "then", "there", "their",
))  # fmt: skip
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


def naive_terms(question: str) -> list[str]:
    """What a keyword search without an analyzer would look for: English words (no stopwords,
    three letters or more), and the character bigrams of Japanese runs (the usual N-gram way)."""
    terms: list[str] = []
    for token in re.findall(r"\w+", question.lower()):
        if CJK.search(token):
            terms += [token[i : i + 2] for i in range(max(1, len(token) - 1))]
        elif len(token) >= 3 and token not in STOPWORDS:
            terms.append(token)
    return list(dict.fromkeys(terms))


async def like_rank(session: AsyncSession, question: str, k: int) -> list[Any]:
    """The baseline: chunks ranked by how many of the question's terms they contain (LIKE)."""
    terms = naive_terms(question)
    if not terms:
        return []
    params = {
        f"t{i}": "%" + t.replace("\\", "\\\\").replace("_", "\\_") + "%"
        for i, t in enumerate(terms)
    }
    matches = [f"(lower(text) LIKE :t{i} ESCAPE '\\')" for i in range(len(terms))]
    score = " + ".join(f"CASE WHEN {m} THEN 1 ELSE 0 END" for m in matches)
    query = text(
        f"SELECT document_id, start_offset, end_offset, {score} AS s FROM document_chunks"
        f" WHERE {' OR '.join(matches)} ORDER BY s DESC, id LIMIT :k"
    )
    return list((await session.execute(query, {**params, "k": k})).all())


def split(articles: list[Article]) -> tuple[list[Article], list[Article]]:
    return articles[0::2], articles[1::2]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(dataset: str, result: SwapResult) -> None:
    n = result.in_total or 1
    print(
        f"{dataset:8} {result.name:6} chunks={result.chunks:5d} "
        f"R@1={result.hits_at_1 / n:.3f} R@5={result.hits_at_5 / n:.3f} "
        f"MRR@10={result.reciprocal_ranks / n:.3f} "
        f"answered={result.answered / n:.3f} "
        f"refused={result.refused / (result.out_total or 1):.3f} "
        f"p50={statistics.median(result.latencies_ms):.2f}ms "
        f"p95={percentile(result.latencies_ms, 0.95):.2f}ms "
        f"(in={result.in_total}, out={result.out_total}, "
        f"ingest {result.chunks / result.index_seconds:.0f} chunks/s)"
    )
    print(
        f"{'':8} {'':6} baseline, LIKE keywords (same corpus, same run): "
        f"R@1={result.like_hits_at_1 / n:.3f} R@5={result.like_hits_at_5 / n:.3f} "
        f"p50={statistics.median(result.like_latencies_ms or [0.0]):.2f}ms"
    )


async def run_quality(args: argparse.Namespace, workdir: Path) -> None:
    gate = service.default_gate()
    dumps = {}
    for dataset, filename in (("jsquad", "jsquad-valid-v1.3.json"), ("xquad-en", "xquad.en.json")):
        if args.dataset not in ("all", dataset):
            continue
        path = Path(args.data) / filename
        if not path.exists():
            print(f"{dataset}: {path} not found, skipped", file=sys.stderr)
            continue
        half_a, half_b = split(load(path))
        for name, corpus, others in (("A|B", half_a, half_b), ("B|A", half_b, half_a)):
            result = await evaluate_swap(
                name, corpus, others, gate, args.postgres, workdir, args.per_paragraph
            )
            report(dataset, result)
            dumps[f"{dataset} {name}"] = result.records
    if args.dump:
        Path(args.dump).write_text(json.dumps(dumps))  # noqa: ASYNC240


KATAKANA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモラリルレロ"
LATIN_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def synthetic_vocabulary(rng: random.Random, size: int) -> list[str]:
    """Pseudo-words (katakana, and Latin syllables), each one analyzer term."""
    words: set[str] = set()
    while len(words) < size:
        if len(words) % 2:
            words.add("".join(rng.choices(KATAKANA, k=rng.randint(3, 6))))
        else:
            words.add("".join(rng.choices(LATIN_SYLLABLES, k=rng.randint(3, 4))))
    return sorted(words)


async def run_scale(args: argparse.Namespace, workdir: Path) -> None:
    """Ingestion throughput and query latency on a synthetic corpus of `args.scale` chunks.

    Words follow Zipf's law (as in real text: a few very common, most rare); each chunk is one
    paragraph of 40 words; a query takes 2-5 words of one random paragraph, as a question about it.
    """
    rng = random.Random(7)
    vocabulary = synthetic_vocabulary(rng, 30_000)
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocabulary))))
    reuse = bool(args.scale_db) and Path(args.scale_db).exists()  # noqa: ASYNC240
    if args.scale_db:  # keep the corpus in this file (SQLite), and reuse it when it exists
        engine = create_engine(f"sqlite+aiosqlite:///{args.scale_db}")
        await upgrade(engine)
    else:
        engine = await fresh_database(args.postgres, workdir)
    sessionmaker = create_sessionmaker(engine)
    per_document = 50
    documents = args.scale // per_document
    started = time.perf_counter()
    chunks = 0
    samples: list[list[str]] = []
    for d in range(documents):
        paragraphs = []
        for _ in range(per_document):
            words = rng.choices(vocabulary, cum_weights=cumulative, k=40)
            if rng.random() < 0.01:
                samples.append(words)
            paragraphs.append("は".join(words[:20]) + "。" + "の".join(words[20:]) + "。")
        if reuse:
            chunks += per_document
            continue
        async with session_scope(sessionmaker) as session:
            result = await index_document(
                session,
                owner_id=None,
                shared=True,
                filename=f"synthetic-{d}.txt",
                content_type="text/plain",
                encoding="utf-8",
                text="\n\n".join(paragraphs),
            )
        chunks += result.document.chunk_count
    seconds = time.perf_counter() - started
    if not reuse:
        print(
            f"scale    ingest  {chunks} chunks in {seconds:.1f}s = {chunks / seconds:.0f} chunks/s"
        )
    user = uuid.uuid4()
    latencies = []
    async with sessionmaker() as session:
        for i in range(args.queries + 10):
            words = rng.sample(rng.choice(samples), k=rng.randint(2, 5))
            query = "の".join(words) + "は何ですか?"
            started = time.perf_counter()
            await service.retrieve(session, user_id=user, query=query, top_k=5)
            if i >= 10:  # warm-up
                latencies.append((time.perf_counter() - started) * 1000)
    # The baseline on the same corpus, in the same run: LIKE keyword matching reads every chunk.
    like_latencies = []
    async with sessionmaker() as session:
        for _ in range(args.like_queries):
            words = rng.sample(rng.choice(samples), k=rng.randint(2, 5))
            started = time.perf_counter()
            await like_rank(session, "の".join(words) + "は何ですか?", 5)
            like_latencies.append((time.perf_counter() - started) * 1000)
    p50 = statistics.median(latencies)
    print(
        f"scale    query   {chunks} chunks: p50={p50:.2f}ms "
        f"p95={percentile(latencies, 0.95):.2f}ms over {len(latencies)} queries (retrieve())"
    )
    if like_latencies:
        like_p50 = statistics.median(like_latencies)
        print(
            f"scale    baseline LIKE keywords: p50={like_p50:.1f}ms over {len(like_latencies)}"
            f" queries ({like_p50 / p50:.0f}x retrieve())"
        )
    if args.scale_db:
        await engine.dispose()
    else:
        await drop_database(engine, args.postgres)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--dataset", choices=["all", "jsquad", "xquad-en", "none"], default="all")
    parser.add_argument("--postgres", help="a PostgreSQL URL (asyncpg) instead of SQLite")
    parser.add_argument("--scale", type=int, default=100_000, help="synthetic chunks (0: skip)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--like-queries", type=int, default=30, help="baseline LIKE queries at scale (0: skip)"
    )
    parser.add_argument("--scale-db", help="SQLite file to keep the synthetic corpus in (reused)")
    parser.add_argument(
        "--per-paragraph",
        action="store_true",
        help="index one document per paragraph (default: one per article, chunked)",
    )
    parser.add_argument("--dump", help="write per-question gate features to this JSON file")
    args = parser.parse_args()
    analyzer().warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        await run_quality(args, Path(tmp))
        if args.scale:
            await run_scale(args, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
