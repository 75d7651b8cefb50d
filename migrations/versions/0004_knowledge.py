"""knowledge: documents, chunks, term statistics, and the database's own full-text index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 02:45:00

The full-text index is not expressible as a model, so it is created here, per dialect, and kept in
step with ``document_chunks`` by triggers (a chunk is indexed the moment it is inserted and leaves
the index the moment it is deleted, whoever deletes it):

- SQLite: an FTS5 table over the chunks' pre-analyzed terms (external content, ``unicode61`` with
  exactly the analyzer's token characters, so FTS5 sees the analyzer's terms one for one).
- PostgreSQL: ``knowledge_fts`` with a ``tsvector`` built from the same terms (positions kept, for
  term frequencies) and a GIN index. Lexemes are taken verbatim (what the ``simple`` configuration
  would do, without re-parsing terms the analyzer already produced).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_FTS = [
    """
    CREATE VIRTUAL TABLE knowledge_fts USING fts5(
        terms,
        content='document_chunks', content_rowid='id',
        tokenize="unicode61 remove_diacritics 0 categories 'L* N*'"
    )
    """,
    """
    CREATE TRIGGER knowledge_fts_after_insert AFTER INSERT ON document_chunks BEGIN
        INSERT INTO knowledge_fts(rowid, terms) VALUES (new.id, new.terms);
    END
    """,
    """
    CREATE TRIGGER knowledge_fts_after_delete AFTER DELETE ON document_chunks BEGIN
        INSERT INTO knowledge_fts(knowledge_fts, rowid, terms)
        VALUES ('delete', old.id, old.terms);
    END
    """,
]

POSTGRES_FTS = [
    """
    CREATE TABLE knowledge_fts (
        chunk_id BIGINT PRIMARY KEY REFERENCES document_chunks(id) ON DELETE CASCADE,
        scope VARCHAR(40) NOT NULL,
        term_count INTEGER NOT NULL,
        tsv TSVECTOR NOT NULL
    )
    """,
    "CREATE INDEX ix_knowledge_fts_tsv ON knowledge_fts USING gin (tsv)",
    """
    CREATE FUNCTION knowledge_fts_index() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO knowledge_fts (chunk_id, scope, term_count, tsv)
        VALUES (
            NEW.id, NEW.scope, NEW.term_count,
            COALESCE((
                SELECT string_agg(quote_literal(t) || ':' || least(i, 16383), ' ')
                FROM unnest(string_to_array(NEW.terms, ' ')) WITH ORDINALITY AS x(t, i)
                WHERE t <> ''
            ), '')::tsvector
        );
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER knowledge_fts_after_insert AFTER INSERT ON document_chunks
    FOR EACH ROW EXECUTE FUNCTION knowledge_fts_index()
    """,
]


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("dedupe_key", sa.String(length=120), nullable=False),
        sa.Column("encoding", sa.String(length=40), nullable=False),
        sa.Column("characters", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_documents_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_documents_dedupe_key")),
    )
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.create_index(
            "ix_documents_owner_id_created_at", ["owner_id", "created_at"], unique=False
        )

    op.create_table(
        "document_chunks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("start_offset", sa.Integer(), nullable=False),
        sa.Column("end_offset", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("terms", sa.Text(), nullable=False),
        sa.Column("term_count", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_document_chunks_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_document_chunks")),
    )
    with op.batch_alter_table("document_chunks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_document_chunks_document_id_ordinal", ["document_id", "ordinal"], unique=False
        )

    op.create_table(
        "knowledge_terms",
        sa.Column("term", sa.String(length=255), nullable=False),
        sa.Column("df", sa.BigInteger(), nullable=False),
        sa.Column("cf", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("term", name=op.f("pk_knowledge_terms")),
    )

    statements = SQLITE_FTS if op.get_bind().dialect.name == "sqlite" else POSTGRES_FTS
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS knowledge_fts_after_delete")
        op.execute("DROP TRIGGER IF EXISTS knowledge_fts_after_insert")
        op.execute("DROP TABLE IF EXISTS knowledge_fts")
    else:
        op.execute("DROP TRIGGER IF EXISTS knowledge_fts_after_insert ON document_chunks")
        op.execute("DROP FUNCTION IF EXISTS knowledge_fts_index()")
        op.execute("DROP TABLE IF EXISTS knowledge_fts")
    op.drop_table("knowledge_terms")
    with op.batch_alter_table("document_chunks", schema=None) as batch_op:
        batch_op.drop_index("ix_document_chunks_document_id_ordinal")
    op.drop_table("document_chunks")
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index("ix_documents_owner_id_created_at")
    op.drop_table("documents")
