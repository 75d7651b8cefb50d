"""billing: each inbox event's outcome explained and filterable; status words that mean one thing

The subscription state is now folded from the inbox's events (docs/decisions/0043), so an
event's outcome can change as later events arrive: ``detail`` says why an event is ignored,
pending or failed, and ``outcome`` is indexed for the admin's filters. The stored state ``pro``
becomes ``active`` or ``trialing`` (plain SQL: the state is derived from the other columns, which
this migration reads as they are).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("billing_webhook_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("detail", sa.String(length=255), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_billing_webhook_events_outcome"), ["outcome"], unique=False
        )
    op.execute(
        "UPDATE billing_subscriptions SET state = CASE WHEN stripe_status = 'trialing' "
        "THEN 'trialing' ELSE 'active' END WHERE state = 'pro'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE billing_subscriptions SET state = 'pro' WHERE state IN ('active', 'trialing')"
    )
    with op.batch_alter_table("billing_webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_webhook_events_outcome"))
        batch_op.drop_column("detail")
