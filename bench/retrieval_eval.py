"""Retrieval evaluation: recall, MRR, refusal of out-of-corpus questions, latency; scale test.

Runs the real knowledge code (analyzer, chunker, FTS index, the embedding queue, the vectors,
hybrid ranking and the relevance gate) on a real SQLite file (or PostgreSQL with --postgres URL),
over the data sets in ../shared/data (see its README for the protocol), and over the paraphrase
sets in bench/data.

    .venv/bin/python bench/retrieval_eval.py             # everything, 100k scale
    .venv/bin/python bench/retrieval_eval.py --scale 0   # quality only

Quality runs, per data set (articles sorted by title):

- halves (--halves): articles split alternately into A and B; index A, ask A's questions
  (in-corpus) and B's (out-of-corpus); then swap. The protocol of the earlier figures.
- sixths: articles dealt into six groups. Calibration runs use groups 0, 2, 4 (corpus g0 with
  g2's questions out-of-corpus, g2 with g4's, g4 with g0's); held-out runs use groups 1, 3, 5 the
  same way, their questions never seen in calibration. Each run twice: the corpus alone, and the
  corpus plus the paragraphs of the four other groups ("x5": four times as many unrelated
  paragraphs of the same language), with the same questions: the gate must answer and refuse
  alike in both.

Every run reports hybrid retrieval, BM25 alone (the lexical candidates in the lexical order with
the BM25 gate: retrieval before vectors) and naive keyword matching with SQL LIKE (English words,
Japanese character bigrams, ranked by how many terms a chunk holds), from the same corpus.

Embeddings of corpus texts and questions are cached in bench/results/ (the first run embeds, the
next ones reuse): quality-run latencies therefore exclude the model; the scale test measures the
whole retrieve() with the model embedding each query.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kiban.core.db import create_engine, create_sessionmaker, session_scope
from kiban.core.migrations import upgrade
from kiban.knowledge import service
from kiban.knowledge.analyzer import analyzer
from kiban.knowledge.embedding import LocalEmbedder
from kiban.knowledge.fusion import fuse
from kiban.knowledge.indexing import index_document
from kiban.knowledge.queue import embed_pending
from kiban.knowledge.ranking import Candidate, QueryProfile
from kiban.knowledge.vectors import pending_chunks, store_vectors

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PARAPHRASES = REPO / "bench" / "data"
RESULTS = REPO / "bench" / "results"
SEP = " [SEP] "


@dataclass
class Article:
    title: str
    paragraphs: list[str]
    questions: list[tuple[str, int]]  # (question, paragraph index)


class CachedEmbedder:
    """The real embedder behind a disk cache (bench/results/), so repeated runs embed each text
    once. ``miss_seconds`` / ``misses`` is the model's own throughput on the texts it embedded."""

    def __init__(self, inner: LocalEmbedder, path: Path | None) -> None:
        self.inner = inner
        self.model = inner.model
        self.dimensions = inner.dimensions
        self.description = inner.description
        self.path = path
        self.cache: dict[str, np.ndarray] = {}
        self.misses = 0
        self.miss_seconds = 0.0
        if path and path.exists():
            with np.load(path) as data:
                self.cache = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    def key(self, text: str, kind: str) -> str:
        return hashlib.sha1(f"{kind}\0{text}".encode()).hexdigest()

    async def embed(self, texts: Sequence[str], kind: str) -> np.ndarray:
        keys = [self.key(t, kind) for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            started = time.perf_counter()
            vectors = await self.inner.embed([texts[i] for i in missing], kind)  # type: ignore[arg-type]
            self.miss_seconds += time.perf_counter() - started
            self.misses += len(missing)
            for i, vector in zip(missing, vectors, strict=True):
                self.cache[keys[i]] = vector
        return np.vstack([self.cache[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def aclose(self) -> None:
        return None

    def save(self) -> None:
        if self.path and self.misses:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = list(self.cache)
            np.savez(
                self.path, keys=np.array(keys), vectors=np.vstack([self.cache[k] for k in keys])
            )


@dataclass
class Tally:
    """Figures of one ranking (hybrid, BM25 alone, or the LIKE baseline) over one run."""

    hits_at_1: int = 0
    hits_at_5: int = 0
    reciprocal_ranks: float = 0.0
    in_total: int = 0
    answered: int = 0
    out_total: int = 0
    refused: int = 0

    def add_in(self, position: int | None, relevant: bool | None) -> None:
        self.in_total += 1
        if position is not None:
            self.hits_at_1 += position == 0
            self.hits_at_5 += position < 5
            self.reciprocal_ranks += 1.0 / (position + 1) if position < 10 else 0.0
        self.answered += bool(relevant)

    def add_out(self, relevant: bool) -> None:
        self.out_total += 1
        self.refused += not relevant

    def merge(self, other: Tally) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def line(self, gated: bool = True) -> str:
        n = self.in_total or 1
        text = (
            f"R@1={self.hits_at_1 / n:.3f} R@5={self.hits_at_5 / n:.3f} "
            f"MRR@10={self.reciprocal_ranks / n:.3f}"
        )
        if gated:
            text += (
                f" answered={self.answered / n:.3f}"
                f" refused={self.refused / (self.out_total or 1):.3f}"
            )
        return text


@dataclass
class RunResult:
    name: str
    hybrid: Tally = field(default_factory=Tally)
    bm25: Tally = field(default_factory=Tally)
    like: Tally = field(default_factory=Tally)
    latencies_ms: list[float] = field(default_factory=list)
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


def _position(ranked: Sequence[Any], gold: tuple[str, int, int]) -> int | None:
    gold_doc, p_start, p_end = gold
    return next(
        (
            i
            for i, c in enumerate(ranked)
            if str(c.document_id).replace("-", "") == gold_doc.replace("-", "")
            and c.start_offset < p_end
            and c.end_offset > p_start
        ),
        None,
    )


def bm25_only(profile: QueryProfile, ranked: list[Candidate], top_k: int) -> list[Candidate]:
    """What retrieval was before vectors: the lexical candidates in the lexical order."""
    return [c for c in ranked if c.lexical_rank is not None][:top_k]


async def evaluate(
    name: str,
    corpus: list[Article],
    questions_in: list[Article],
    questions_out: list[Article],
    retriever: service.Retriever,
    args: argparse.Namespace,
    workdir: Path,
    distractors: list[Article] | None = None,
) -> RunResult:
    """Index `corpus` (+ `distractors`), ask `questions_in` (in-corpus) and `questions_out`."""
    result = RunResult(name)
    engine = await fresh_database(args.postgres, workdir)
    sessionmaker = create_sessionmaker(engine)
    started = time.perf_counter()
    gold = await ingest(sessionmaker, corpus + (distractors or []), args.per_paragraph)
    result.index_seconds = time.perf_counter() - started
    if retriever.embedder is not None:
        await embed_pending(sessionmaker, retriever.embedder, batch_size=32)
    retriever.shared_vectors.clear()
    async with sessionmaker() as session:
        result.chunks = int(
            (await session.execute(text("SELECT count(*) FROM document_chunks"))).scalar_one()
        )
    user = uuid.uuid4()
    gate, hybrid = retriever.gate, retriever.hybrid
    async with sessionmaker() as session:
        for in_corpus, articles in ((True, questions_in), (False, questions_out)):
            for article in articles:
                for question, paragraph in article.questions:
                    started = time.perf_counter()
                    profile, ranked = await service.candidates(
                        session, retriever, user, question, 10
                    )
                    fused = fuse(profile, ranked, gate, hybrid)[:10] if retriever.embedder else []
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                    lexical = bm25_only(profile, ranked, 10)
                    lexical_relevant = any(gate.decide(profile, lexical))
                    hybrid_relevant = any(s.relevant for s in fused)
                    record: dict[str, Any] = {
                        "in": in_corpus,
                        "ja": profile.japanese,
                        "weight": profile.weight,
                        "candidates": [
                            [
                                c.rank_score,
                                c.coverage,
                                c.strength,
                                c.cosine if c.cosine is not None else -1.0,
                                -1 if c.lexical_rank is None else c.lexical_rank,
                                -1 if c.dense_rank is None else c.dense_rank,
                            ]
                            for c in ranked
                        ],
                        "gold": -1,
                    }
                    if not in_corpus:
                        result.bm25.add_out(lexical_relevant)
                        result.hybrid.add_out(hybrid_relevant)
                    else:
                        where = gold[(article.title, paragraph)]
                        result.bm25.add_in(_position(lexical, where), lexical_relevant)
                        result.hybrid.add_in(
                            _position([s.candidate for s in fused], where), hybrid_relevant
                        )
                        golds = [i for i, c in enumerate(ranked) if _position([c], where) == 0]
                        record["gold"] = golds
                        if args.like:
                            started = time.perf_counter()
                            baseline = await like_rank(session, question, 5)
                            result.like_latencies_ms.append((time.perf_counter() - started) * 1000)
                            result.like.add_in(_position(baseline, where), None)
                    result.records.append(record)
    await drop_database(engine, args.postgres)
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


def sixths(articles: list[Article]) -> list[list[Article]]:
    """Articles sorted by title, dealt into six groups: 0, 2, 4 calibrate; 1, 3, 5 are held out."""
    return [articles[i::6] for i in range(6)]


# (corpus group, out-of-corpus group): the other four groups are the distractors.
CALIBRATION_RUNS = ((0, 2), (2, 4), (4, 0))
HELD_OUT_RUNS = ((1, 3), (3, 5), (5, 1))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def report(dataset: str, result: RunResult, embedder: bool) -> None:
    latency = (
        f"p50={statistics.median(result.latencies_ms or [0.0]):.2f}ms "
        f"p95={percentile(result.latencies_ms, 0.95):.2f}ms"
    )
    print(
        f"{dataset:8} {result.name:14} chunks={result.chunks:5d} "
        f"in={result.hybrid.in_total} out={result.hybrid.out_total} {latency}"
    )
    if embedder:
        print(f"{'':8} {'':14} hybrid      {result.hybrid.line()}")
    print(f"{'':8} {'':14} BM25 alone  {result.bm25.line()}")
    if result.like.in_total:
        print(
            f"{'':8} {'':14} LIKE        {result.like.line(gated=False)} "
            f"p50={statistics.median(result.like_latencies_ms or [0.0]):.2f}ms"
        )


def pooled(results: list[RunResult], name: str) -> RunResult:
    total = RunResult(name)
    for r in results:
        total.hybrid.merge(r.hybrid)
        total.bm25.merge(r.bm25)
        total.like.merge(r.like)
        total.latencies_ms += r.latencies_ms
        total.like_latencies_ms += r.like_latencies_ms
        total.chunks += r.chunks
    total.chunks //= max(1, len(results))
    return total


async def run_quality(
    args: argparse.Namespace, workdir: Path, retriever: service.Retriever
) -> dict[str, Any]:
    dumps: dict[str, Any] = {}
    embedder = retriever.embedder is not None
    for dataset, filename in (("jsquad", "jsquad-valid-v1.3.json"), ("xquad-en", "xquad.en.json")):
        if args.dataset not in ("all", dataset):
            continue
        path = Path(args.data) / filename
        if not path.exists():
            print(f"{dataset}: {path} not found, skipped", file=sys.stderr)
            continue
        articles = load(path)
        if args.halves:
            half_a, half_b = split(articles)
            for name, corpus, others in (("A|B", half_a, half_b), ("B|A", half_b, half_a)):
                result = await evaluate(name, corpus, corpus, others, retriever, args, workdir)
                report(dataset, result, embedder)
                dumps[f"{dataset} {name}"] = result.records
        groups = sixths(articles)
        for role, runs in (("calibration", CALIBRATION_RUNS), ("held-out", HELD_OUT_RUNS)):
            if args.held_out_only and role == "calibration":
                continue
            for size in ("alone", "x5"):
                results = []
                for c, o in runs:
                    distractors = None
                    if size == "x5":
                        distractors = [
                            a for i, g in enumerate(groups) if i not in (c, o) for a in g
                        ]
                    result = await evaluate(
                        f"g{c}|g{o} {size}",
                        groups[c],
                        groups[c],
                        groups[o],
                        retriever,
                        args,
                        workdir,
                        distractors,
                    )
                    dumps[f"{dataset} {role} {size} {result.name}"] = result.records
                    results.append(result)
                report(dataset, pooled(results, f"{role} {size}"), embedder)
    return dumps


def load_paraphrases(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def run_paraphrase(
    args: argparse.Namespace, workdir: Path, retriever: service.Retriever
) -> None:
    """Questions that use other words than their passage: hybrid against BM25 alone."""
    for language in ("ja", "en"):
        path = PARAPHRASES / f"paraphrase_{language}.jsonl"
        pairs = load_paraphrases(path)
        engine = await fresh_database(args.postgres, workdir)
        sessionmaker = create_sessionmaker(engine)
        documents: dict[str, str] = {}
        async with session_scope(sessionmaker) as session:
            for pair in pairs:
                result = await index_document(
                    session,
                    owner_id=None,
                    shared=True,
                    filename=f"{pair['topic']}.md",
                    content_type="text/markdown",
                    encoding="utf-8",
                    text=pair["passage"],
                )
                documents[pair["id"]] = str(result.document.id)
        if retriever.embedder is not None:
            await embed_pending(sessionmaker, retriever.embedder, batch_size=32)
        retriever.shared_vectors.clear()
        hybrid, bm25 = Tally(), Tally()
        user = uuid.uuid4()
        async with sessionmaker() as session:
            for pair in pairs:
                profile, ranked = await service.candidates(
                    session, retriever, user, pair["question"], 10
                )
                lexical = bm25_only(profile, ranked, 10)
                fused = [
                    s.candidate for s in fuse(profile, ranked, retriever.gate, retriever.hybrid)
                ][:10]
                target = documents[pair["id"]]
                scored = fuse(profile, ranked, retriever.gate, retriever.hybrid)
                for tally, order, relevant in (
                    (bm25, lexical, any(retriever.gate.decide(profile, lexical))),
                    (hybrid, fused, any(s.relevant for s in scored)),
                ):
                    position = next(
                        (i for i, c in enumerate(order) if str(c.document_id) == target), None
                    )
                    tally.add_in(position, relevant)
        await drop_database(engine, args.postgres)
        print(f"paraphrase-{language} pairs={len(pairs)}")
        if retriever.embedder is not None:
            print(
                f"{'':8} hybrid      {hybrid.line(gated=False)}"
                f" answered={hybrid.answered / len(pairs):.3f}"
            )
        print(
            f"{'':8} BM25 alone  {bm25.line(gated=False)} answered={bm25.answered / len(pairs):.3f}"
        )


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


async def run_scale(args: argparse.Namespace, workdir: Path, retriever: service.Retriever) -> None:
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
            " (BM25 index; vectors are the queue's, below)"
        )
    model = retriever.embedder.model if retriever.embedder else None
    if model is not None:
        # Embedding 100,000 chunks with the local model takes hours on two cores, and pseudo-words
        # mean nothing to it: the synthetic chunks get random unit vectors, stored the queue's
        # way (store_vectors). Search time depends on the count and the dimensions only.
        vrng = np.random.default_rng(7)
        vstarted = time.perf_counter()
        stored = 0
        while True:
            async with sessionmaker() as session:
                batch = await pending_chunks(session, model, 2000)
            if not batch:
                break
            vectors = vrng.standard_normal((len(batch), 384)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            async with session_scope(sessionmaker) as session:
                await store_vectors(
                    session, model, [(c.id, c.scope, vectors[i]) for i, c in enumerate(batch)]
                )
            stored += len(batch)
        if stored:
            vseconds = time.perf_counter() - vstarted
            print(f"scale    vectors {stored} stored in {vseconds:.1f}s (random, see the source)")
        sample = [
            "は".join(rng.choices(vocabulary, cum_weights=cumulative, k=20)) + "。"
            for _ in range(32)
        ]
        estarted = time.perf_counter()
        await retriever.embedder.embed(sample, "passage")
        print(
            f"scale    embedder {retriever.embedder.model}: "
            f"{len(sample) / (time.perf_counter() - estarted):.1f} passages/s on this machine"
        )
    user = uuid.uuid4()
    latencies = []
    bm25_latencies = []
    embed_latencies = []
    async with sessionmaker() as session:
        for i in range(args.queries + 10):
            words = rng.sample(rng.choice(samples), k=rng.randint(2, 5))
            query = "の".join(words) + "は何ですか?"
            started = time.perf_counter()
            await service.retrieve(session, user_id=user, query=query, top_k=5)
            middle = time.perf_counter()
            if retriever.embedder is not None:
                # The whole hybrid path, the query's embedding by the real model included.
                await service.retrieve(
                    session, user_id=user, query=query, top_k=5, retriever=retriever
                )
            ended = time.perf_counter()
            if retriever.embedder is not None and i % 10 == 0:
                estarted = time.perf_counter()
                await retriever.embedder.embed([query], "query")
                embed_latencies.append((time.perf_counter() - estarted) * 1000)
            if i >= 10:  # warm-up
                bm25_latencies.append((middle - started) * 1000)
                latencies.append((ended - middle) * 1000)
    # The baseline on the same corpus, in the same run: LIKE keyword matching reads every chunk.
    like_latencies = []
    async with sessionmaker() as session:
        for _ in range(args.like_queries):
            words = rng.sample(rng.choice(samples), k=rng.randint(2, 5))
            started = time.perf_counter()
            await like_rank(session, "の".join(words) + "は何ですか?", 5)
            like_latencies.append((time.perf_counter() - started) * 1000)
    p50 = statistics.median(bm25_latencies)
    print(
        f"scale    BM25 alone {chunks} chunks: p50={p50:.2f}ms "
        f"p95={percentile(bm25_latencies, 0.95):.2f}ms over {len(bm25_latencies)} queries"
        " (retrieve() without an embedder)"
    )
    if retriever.embedder is not None:
        print(
            f"scale    hybrid     {chunks} chunks: p50={statistics.median(latencies):.2f}ms "
            f"p95={percentile(latencies, 0.95):.2f}ms over {len(latencies)} queries"
            " (retrieve(): query embedding, BM25, exact dense search, fusion, gate)"
        )
        print(
            "scale    of which the query's embedding: "
            f"p50={statistics.median(embed_latencies):.2f}ms"
            f" over {len(embed_latencies)}"
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
    parser.add_argument("--embedder", choices=["local", "none"], default="local")
    parser.add_argument("--scale", type=int, default=100_000, help="synthetic chunks (0: skip)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--like-queries", type=int, default=30, help="baseline LIKE queries at scale (0: skip)"
    )
    parser.add_argument("--no-like", dest="like", action="store_false", help="skip LIKE in runs")
    parser.add_argument("--halves", action="store_true", help="also the A|B, B|A halves runs")
    parser.add_argument("--held-out-only", action="store_true", help="skip calibration runs")
    parser.add_argument("--no-paraphrase", dest="paraphrase", action="store_false")
    parser.add_argument("--scale-db", help="SQLite file to keep the synthetic corpus in (reused)")
    parser.add_argument(
        "--per-paragraph",
        action="store_true",
        help="index one document per paragraph (default: one per article, chunked)",
    )
    parser.add_argument("--dump", help="write per-question candidate features to this JSON file")
    args = parser.parse_args()
    analyzer().warm_up()
    embedder = None
    if args.embedder == "local":
        embedder = CachedEmbedder(LocalEmbedder(), RESULTS / "embedding-cache.npz")
    retriever = service.Retriever(embedder=embedder)  # type: ignore[arg-type]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.paraphrase:
                await run_paraphrase(args, Path(tmp), retriever)
            dumps = await run_quality(args, Path(tmp), retriever)
            if args.dump:
                Path(args.dump).write_text(json.dumps(dumps))  # noqa: ASYNC240
            if embedder is not None and embedder.misses:
                print(
                    f"embedder {embedder.model}: {embedder.misses} texts embedded in "
                    f"{embedder.miss_seconds:.0f}s = {embedder.misses / embedder.miss_seconds:.1f}"
                    " texts/s (the rest came from the cache)"
                )
            if args.scale:
                real = service.Retriever(embedder=LocalEmbedder()) if embedder else retriever
                await run_scale(args, Path(tmp), real)
    finally:
        if embedder is not None:
            embedder.save()


if __name__ == "__main__":
    asyncio.run(main())
