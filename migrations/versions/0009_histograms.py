"""admin analytics: hourly and daily latency and TTFT histograms, value indexes on the ledger

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 05:30:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from kiban.admin.histograms import record_bins
from kiban.models.base import UTCDateTime

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 50_000


def _histogram(name: str, time: str) -> sa.Table:
    return op.create_table(
        name,
        sa.Column(time, UTCDateTime(timezone=True), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(time, "metric", "bin", name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    hourly = _histogram("usage_histograms_hourly", "hour")
    daily = _histogram("usage_histograms_daily", "day")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_latency", ["response_time_ms", "created_at", "status"], unique=False
        )
        batch_op.create_index(
            "ix_usage_records_ttft",
            ["time_to_first_token_ms", "created_at", "status"],
            unique=False,
        )
    # The backfill bins in Python with the same function as the ledger writer (the bins' edges
    # are floats that SQL could not reproduce exactly on both databases), a chunk at a time.
    ledger = sa.table(
        "usage_records",
        sa.column("id", sa.BigInteger()),
        sa.column("created_at", UTCDateTime(timezone=True)),
        sa.column("status", sa.String()),
        sa.column("response_time_ms", sa.Float()),
        sa.column("time_to_first_token_ms", sa.Float()),
    )
    bind = op.get_bind()
    counts: dict[tuple[datetime, str, int], int] = {}
    days: dict[tuple[datetime, str, int], int] = {}
    last_id = None
    while True:
        query = sa.select(ledger).order_by(ledger.c.id).limit(CHUNK)
        if last_id is not None:
            query = query.where(ledger.c.id > last_id)
        rows = bind.execute(query).all()
        if not rows:
            break
        last_id = rows[-1].id
        for row in rows:
            hour = row.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            for metric, index in record_bins(row._mapping):
                key = (hour, metric, index)
                counts[key] = counts.get(key, 0) + 1
                day = (hour.replace(hour=0), metric, index)
                days[day] = days.get(day, 0) + 1
    for table, time, binned in ((hourly, "hour", counts), (daily, "day", days)):
        rows_out = [{time: t, "metric": m, "bin": b, "count": n} for (t, m, b), n in binned.items()]
        for start in range(0, len(rows_out), CHUNK):
            bind.execute(table.insert(), rows_out[start : start + CHUNK])


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_ttft")
        batch_op.drop_index("ix_usage_records_latency")
    op.drop_table("usage_histograms_daily")
    op.drop_table("usage_histograms_hourly")
