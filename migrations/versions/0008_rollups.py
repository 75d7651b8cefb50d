"""admin analytics: hourly and per-user daily rollups of the usage ledger, backfilled

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 03:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The backfill, per dialect: the figures kiban.usage.rollups.add writes with each batch (as of 0008).
# SQLite keeps UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text and UUIDs as 32 hex digits.
_BUCKETS = {
    "sqlite": (
        "substr(created_at, 1, 13) || ':00:00.000000'",
        "substr(created_at, 1, 10) || ' 00:00:00.000000'",
        "coalesce(user_id, '00000000000000000000000000000000')",
    ),
    "postgresql": (
        "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
        "date_trunc('day', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
        "coalesce(user_id, '00000000-0000-0000-0000-000000000000'::uuid)",
    ),
}
_COST = "coalesce(sum(CAST(round(estimated_cost * 10000000000) AS BIGINT)), 0)"


def _figures() -> list[sa.Column[int]]:
    return [
        sa.Column(name, sa.BigInteger(), nullable=False)
        for name in ("requests", "total_tokens", "cost_units")
    ]


def upgrade() -> None:
    op.create_table(
        "usage_rollups_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=False),
        *_figures(),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("unpriced", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "model", "endpoint", "status", "plan", name=op.f("pk_usage_rollups_hourly")
        ),
    )
    op.create_table(
        "usage_rollups_user_daily",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        *_figures(),
        sa.PrimaryKeyConstraint("day", "user_id", name=op.f("pk_usage_rollups_user_daily")),
    )
    # The SQL is built from the constants above only (no input): S608 does not apply.
    hour, day, user = _BUCKETS[op.get_bind().dialect.name]
    op.execute(
        "INSERT INTO usage_rollups_hourly (hour, model, endpoint, status, plan, requests,"  # noqa: S608
        " prompt_tokens, completion_tokens, total_tokens, cost_units, unpriced)"
        f" SELECT {hour}, model, endpoint, status, coalesce(plan, ''), count(*),"
        f" sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), {_COST},"
        " count(*) FILTER (WHERE estimated_cost IS NULL AND total_tokens > 0)"
        " FROM usage_records GROUP BY 1, 2, 3, 4, 5"
    )
    op.execute(
        "INSERT INTO usage_rollups_user_daily"  # noqa: S608
        " (day, user_id, requests, total_tokens, cost_units)"
        f" SELECT {day}, {user}, count(*), sum(total_tokens), {_COST}"
        " FROM usage_records GROUP BY 1, 2"
    )


def downgrade() -> None:
    op.drop_table("usage_rollups_user_daily")
    op.drop_table("usage_rollups_hourly")
