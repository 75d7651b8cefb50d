"""usage ledger: the deployment that served a call, its attempts, and cache-write tokens

``deployment`` names the configured upstream deployment that answered (NULL for the built-in
engine, refusals and records written before deployments existed); ``attempts`` counts the
upstream attempts the call took across retries and failovers (0 when none was made);
``cache_write_tokens`` keeps Anthropic's ``cache_creation_input_tokens`` beside
``cached_tokens`` (prompt tokens read from a cache: OpenAI's ``cached_tokens``, Anthropic's
``cache_read_input_tokens``), each priced on its own.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deployment", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(
            sa.Column(
                "cache_write_tokens", sa.BigInteger(), nullable=False, server_default=sa.text("0")
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("cache_write_tokens")
        batch_op.drop_column("attempts")
        batch_op.drop_column("deployment")
