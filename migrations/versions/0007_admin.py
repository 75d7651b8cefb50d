"""admin analytics: a covering index on the usage ledger

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 02:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ANALYTICS_COLUMNS = [
    "created_at",
    "status",
    "model",
    "endpoint",
    "plan",
    "user_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated_cost",
    "response_time_ms",
    "time_to_first_token_ms",
]


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index("ix_usage_records_analytics", ANALYTICS_COLUMNS, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_analytics")
