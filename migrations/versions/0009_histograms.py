"""admin analytics: hourly and daily latency and TTFT histograms, value indexes on the ledger

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 05:30:00
"""

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Dialect

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 50_000


# --- frozen: what this migration computes, copied from kiban as of 0009 ------------------------
# A migration must give the same result whenever it runs, whatever the live code has become:
# nothing here may import from kiban (kiban.usage.bins and kiban.models.base hold the live ones).


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive values)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


LATENCY = "latency"
TTFT = "ttft"
REJECTED = "rejected"


def _edges() -> tuple[float, ...]:
    # 0, then from 0.01 ms up by 5% (rounded to four significant digits) until past 10^8 ms.
    edges, i = [0.0], 0
    while edges[-1] < 1e8:
        edges.append(float(f"{0.01 * 1.05**i:.4g}"))
        i += 1
    return tuple(edges)


EDGES = _edges()


def bin_of(value: float) -> int:
    """The bin of a value: bin ``i`` holds ``EDGES[i-1] <= value < EDGES[i]`` (open at the ends)."""
    return bisect_right(EDGES, value)


def record_bins(record: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The (metric, bin) pairs a ledger record adds to the histograms."""
    if record["status"] == REJECTED:  # never reached a provider: no latency
        return []
    bins = [(LATENCY, bin_of(float(record.get("response_time_ms") or 0.0)))]
    ttft = record.get("time_to_first_token_ms")
    if ttft is not None:
        bins.append((TTFT, bin_of(float(ttft))))
    return bins


# --- the migration ------------------------------------------------------------------------------


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
    # The backfill bins in Python with the ledger writer's function (frozen above) (the bins' edges
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
