"""quota: settled reservation ids, so that a retried settle counts once

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_settlements",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_settlements")),
    )
    with op.batch_alter_table("quota_settlements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_quota_settlements_created_at"), ["created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("quota_settlements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quota_settlements_created_at"))
    op.drop_table("quota_settlements")
