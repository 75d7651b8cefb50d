"""knowledge: chunk vectors for dense retrieval, one row per chunk and embedding model

``chunk_vectors`` holds each chunk's embedding (float32 bytes) with the chunk's scope, so search
filters vectors by visibility in SQL as it does chunks; rows leave with their chunk (foreign key,
ON DELETE CASCADE, on both databases). ``knowledge_vector_versions`` counts writes and deletes
per model and scope, which is how each process knows when its cache of shared vectors is stale.
Existing chunks have no vector yet: the embedding queue (chunks without a vector for the active
model) embeds them after the upgrade, in the background.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 17:13:21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "knowledge_vector_versions",
        sa.Column("model", sa.String(length=120), nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("deletions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "scope", name=op.f("pk_knowledge_vector_versions")),
    )
    op.create_table(
        "chunk_vectors",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("chunk_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model", sa.String(length=120), nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_id"],
            ["document_chunks.id"],
            name=op.f("fk_chunk_vectors_chunk_id_document_chunks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chunk_vectors")),
        sa.UniqueConstraint("chunk_id", "model", name=op.f("uq_chunk_vectors_chunk_id")),
    )
    with op.batch_alter_table("chunk_vectors", schema=None) as batch_op:
        batch_op.create_index(
            "ix_chunk_vectors_model_scope_id", ["model", "scope", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("chunk_vectors", schema=None) as batch_op:
        batch_op.drop_index("ix_chunk_vectors_model_scope_id")

    op.drop_table("chunk_vectors")
    op.drop_table("knowledge_vector_versions")
