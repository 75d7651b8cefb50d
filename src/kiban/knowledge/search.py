"""Search backends: BM25 over the database's own full-text index (SQLite FTS5, PostgreSQL GIN).

Both backends score with the same BM25 (FTS5's formula: k1 = 1.2, b = 0.75, idf =
log((N - df + 0.5) / (df + 0.5)) floored at 1e-6), so a score means the same on either database.
SQLite computes it with FTS5's ``bm25()``; PostgreSQL finds candidates with the GIN index and
computes it over them from the ``tsvector`` positions and the term statistics in
``knowledge_terms``. Visibility (the caller's scope or "shared") is a condition of the search
statement itself on both, so another user's chunks never leave the database.

On SQLite, the statement takes the best few matches from FTS5 first and checks their scope (a
row lookup each); only when too few of them are visible does it fall back to checking the scope of
every match. Checking every match up front costs a lookup per matching row, which at 100,000
chunks is most of the query's time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from kiban.models.knowledge import KnowledgeTerm

K1 = 1.2
B = 0.75
MIN_IDF = 1e-6
CORPUS_ROW = ""  # the knowledge_terms row holding the totals (no term is empty)


@dataclass(frozen=True)
class CorpusStats:
    chunks: int
    terms: int
    df: dict[str, int]

    @property
    def avgdl(self) -> float:
        return self.terms / self.chunks if self.chunks and self.terms else 1.0

    def idf(self, term: str) -> float:
        """BM25 idf of `term` as FTS5 computes it (a term absent from the corpus gets the most)."""
        df = self.df.get(term, 0)
        return max(MIN_IDF, math.log((self.chunks - df + 0.5) / (df + 0.5)))

    def gate_idf(self, term: str) -> float:
        """A term's informativeness for the relevance gate: always positive (even in a corpus of
        one chunk, where BM25's idf vanishes), and a term the corpus has never seen weighs as much
        as its rarest term, not more (a typo must not outweigh the rest of the question)."""
        df = max(1, self.df.get(term, 0))
        chunks = max(self.chunks, df)
        return math.log(1.0 + (chunks - df + 0.5) / (df + 0.5))


async def corpus_stats(session: AsyncSession, terms: Iterable[str]) -> CorpusStats:
    """Chunk and term totals, and the document frequency of each of `terms`."""
    wanted = {*terms, CORPUS_ROW}
    rows = await session.execute(
        select(KnowledgeTerm.term, KnowledgeTerm.df, KnowledgeTerm.cf).where(
            KnowledgeTerm.term.in_(wanted)
        )
    )
    df: dict[str, int] = {}
    chunks = total = 0
    for term, term_df, cf in rows:
        if term == CORPUS_ROW:
            chunks, total = term_df, cf
        else:
            df[term] = term_df
    return CorpusStats(chunks=chunks, terms=total, df=df)


async def update_term_stats(
    session: AsyncSession, chunk_terms: Sequence[Sequence[str]], *, sign: int = 1
) -> None:
    """Add (sign=1) or remove (sign=-1) chunks' terms to the document frequencies and totals."""
    if not chunk_terms:
        return
    df: Counter[str] = Counter()
    cf: Counter[str] = Counter()
    for terms in chunk_terms:
        df.update(set(terms))
        cf.update(terms)
    df[CORPUS_ROW] = len(chunk_terms)
    cf[CORPUS_ROW] = sum(len(terms) for terms in chunk_terms)
    # One order for every writer: concurrent uploads on PostgreSQL lock rows in the same order and
    # cannot deadlock.
    rows = [{"term": t, "df": sign * df[t], "cf": sign * cf[t]} for t in sorted(df)]
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(KnowledgeTerm)
    statement = statement.on_conflict_do_update(
        index_elements=[KnowledgeTerm.term],
        set_={
            "df": KnowledgeTerm.df + statement.excluded.df,
            "cf": KnowledgeTerm.cf + statement.excluded.cf,
        },
    )
    for start in range(0, len(rows), 1000):
        await session.execute(statement, rows[start : start + 1000])
    if sign < 0:
        await session.execute(
            delete(KnowledgeTerm).where(KnowledgeTerm.df <= 0, KnowledgeTerm.term != CORPUS_ROW)
        )


async def bm25_candidates(
    session: AsyncSession,
    terms: Sequence[str],
    scopes: Sequence[str],
    stats: CorpusStats,
    limit: int,
) -> list[tuple[int, float]]:
    """The best `limit` (chunk id, BM25 score) among the chunks in `scopes` holding any term."""
    unique = list(dict.fromkeys(terms))
    if not unique or not scopes or stats.chunks == 0:
        return []
    if session.get_bind().dialect.name == "sqlite":
        return await _sqlite_candidates(session, unique, scopes, limit)
    return await _postgres_candidates(session, unique, scopes, stats, limit)


def _fts5_string(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


# The best matches first, then their scope: cheap, and exact whenever enough of them are visible.
_SQLITE_TOP_THEN_SCOPE = text(
    """
    WITH top AS MATERIALIZED (
        SELECT rowid AS id, bm25(knowledge_fts) AS rank FROM knowledge_fts
        WHERE knowledge_fts MATCH :match ORDER BY rank LIMIT :pool
    )
    SELECT top.id, top.rank, (SELECT count(*) FROM top) AS pooled
    FROM top JOIN document_chunks AS c ON c.id = top.id
    WHERE c.scope IN (:scope_1, :scope_2)
    ORDER BY top.rank
    """
)
_SQLITE_SCOPE_EVERY_MATCH = text(
    """
    SELECT f.rowid, bm25(knowledge_fts) AS rank
    FROM knowledge_fts AS f JOIN document_chunks AS c ON c.id = f.rowid
    WHERE knowledge_fts MATCH :match AND c.scope IN (:scope_1, :scope_2)
    ORDER BY rank LIMIT :limit
    """
)


async def _sqlite_candidates(
    session: AsyncSession, terms: Sequence[str], scopes: Sequence[str], limit: int
) -> list[tuple[int, float]]:
    match = " OR ".join(map(_fts5_string, terms))
    scope_1, scope_2 = (list(scopes) * 2)[:2]
    pool = 2 * limit
    rows = (
        await session.execute(
            _SQLITE_TOP_THEN_SCOPE,
            {"match": match, "pool": pool, "scope_1": scope_1, "scope_2": scope_2},
        )
    ).all()
    visible = [(int(chunk_id), -float(rank)) for chunk_id, rank, _ in rows]
    pooled = int(rows[0][2]) if rows else pool
    # Exact when the pool held every match, or enough visible ones: any visible chunk outside the
    # pool ranks below all of it.
    if len(visible) >= limit or pooled < pool:
        return visible[:limit]
    rows = (
        await session.execute(
            _SQLITE_SCOPE_EVERY_MATCH,
            {"match": match, "limit": limit, "scope_1": scope_1, "scope_2": scope_2},
        )
    ).all()
    return [(int(chunk_id), -float(rank)) for chunk_id, rank in rows]


def _tsquery_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


_POSTGRES_BM25 = text(
    """
    SELECT f.chunk_id,
           SUM(q.idf * (cardinality(u.positions) * (:k1 + 1.0))
               / (cardinality(u.positions) + :k1 * (1.0 - :b + :b * f.term_count / :avgdl)))
               AS score
    FROM knowledge_fts AS f
    CROSS JOIN LATERAL unnest(f.tsv) AS u(lexeme, positions, weights)
    JOIN unnest(CAST(:terms AS text[]), CAST(:idfs AS float8[])) AS q(term, idf)
      ON q.term = u.lexeme
    WHERE f.tsv @@ CAST(:tsquery AS tsquery) AND f.scope = ANY(CAST(:scopes AS text[]))
    GROUP BY f.chunk_id
    ORDER BY score DESC, f.chunk_id
    LIMIT :limit
    """
)


async def _postgres_candidates(
    session: AsyncSession,
    terms: Sequence[str],
    scopes: Sequence[str],
    stats: CorpusStats,
    limit: int,
) -> list[tuple[int, float]]:
    rows = await session.execute(
        _POSTGRES_BM25,
        {
            "k1": K1,
            "b": B,
            "avgdl": stats.avgdl,
            "terms": list(terms),
            "idfs": [stats.idf(t) for t in terms],
            "tsquery": " | ".join(map(_tsquery_literal, terms)),
            "scopes": list(scopes),
            "limit": limit,
        },
    )
    return [(int(chunk_id), float(score)) for chunk_id, score in rows]
