"""auth: a change counter that every write changing an API key's authentication bumps

Each process serves API keys from a cache (``kiban.auth.key_cache``) and polls these tables to
drop what changed (docs/decisions/0008). The counter must move in the same transaction as every
such write, whoever makes it (the ORM, a bulk UPDATE, raw SQL, a cascade, an operator in psql),
so triggers bump it, not the application:

- ``auth_epoch``: one row, ``value`` + 1 per change. Writers take its row lock until they commit,
  so values become visible in the order they were given: a poll that sees value N has seen every
  change up to N.
- ``auth_changes``: per user, the value of its latest change (no foreign key: a deleted user's
  row must stay, so its keys are dropped too).

What bumps (and why these and nothing else: it is what ``authenticate_api_key`` reads):
``users`` any UPDATE or DELETE; ``api_keys`` UPDATE (except one that only moves ``last_used_at``,
written once a minute per key) or DELETE; ``api_key_limits`` INSERT or DELETE (whether a key has
limits; the window columns change on every request and are read by the quota store, not the
cache); ``billing_subscriptions`` any INSERT, UPDATE or DELETE (the paid-access bound).

SQLite drops a table's triggers when ``batch_alter_table`` rebuilds it: a later migration that
batch-alters one of these four tables must create its triggers again
(tests/auth/test_api_key_cache.py checks they exist at head).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (trigger, event, table, WHEN condition or None, SQL expression of the user whose keys change)
_KEY_ONLY_TOUCHED = (
    "OLD.last_used_at IS {same} NEW.last_used_at OR OLD.id IS {distinct} NEW.id "
    "OR OLD.user_id IS {distinct} NEW.user_id OR OLD.lookup_id IS {distinct} NEW.lookup_id "
    "OR OLD.key_hash IS {distinct} NEW.key_hash OR OLD.revoked_at IS {distinct} NEW.revoked_at"
)
_LIMIT_OWNER = "(SELECT user_id FROM api_keys WHERE id = {row}.api_key_id)"
TRIGGERS: list[tuple[str, str, str, str | None, tuple[str, ...]]] = [
    ("auth_changes_users_update", "UPDATE", "users", None, ("OLD.id",)),
    ("auth_changes_users_delete", "DELETE", "users", None, ("OLD.id",)),
    ("auth_changes_api_keys_update", "UPDATE", "api_keys", _KEY_ONLY_TOUCHED, ("OLD.user_id",)),
    ("auth_changes_api_keys_delete", "DELETE", "api_keys", None, ("OLD.user_id",)),
    (
        "auth_changes_api_key_limits_insert",
        "INSERT",
        "api_key_limits",
        None,
        (_LIMIT_OWNER.format(row="NEW"),),
    ),
    (
        "auth_changes_api_key_limits_update",
        "UPDATE",
        "api_key_limits",
        "OLD.api_key_id IS {distinct} NEW.api_key_id",
        (_LIMIT_OWNER.format(row="OLD"), _LIMIT_OWNER.format(row="NEW")),
    ),
    (
        "auth_changes_api_key_limits_delete",
        "DELETE",
        "api_key_limits",
        None,
        (_LIMIT_OWNER.format(row="OLD"),),
    ),
    (
        "auth_changes_billing_subscriptions_insert",
        "INSERT",
        "billing_subscriptions",
        None,
        ("NEW.user_id",),
    ),
    (
        "auth_changes_billing_subscriptions_update",
        "UPDATE",
        "billing_subscriptions",
        None,
        ("OLD.user_id", "NEW.user_id"),
    ),
    (
        "auth_changes_billing_subscriptions_delete",
        "DELETE",
        "billing_subscriptions",
        None,
        ("OLD.user_id",),
    ),
]

# SQLite has no functions: each trigger bumps the counter and records the user itself.
_SQLITE_CHANGE = """
    INSERT INTO auth_epoch (id, value) VALUES (1, 1)
        ON CONFLICT (id) DO UPDATE SET value = value + 1;
    INSERT INTO auth_changes (user_id, epoch)
        SELECT changed.user_id, auth_epoch.value
        FROM auth_epoch, (SELECT {user} AS user_id) AS changed
        WHERE auth_epoch.id = 1 AND changed.user_id IS NOT NULL
        ON CONFLICT (user_id) DO UPDATE SET epoch = excluded.epoch;
"""

_POSTGRES_FUNCTION = """
CREATE FUNCTION auth_changed(changed uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    bumped bigint;
BEGIN
    IF changed IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO auth_epoch AS e (id, value) VALUES (1, 1)
        ON CONFLICT (id) DO UPDATE SET value = e.value + 1
        RETURNING e.value INTO bumped;
    INSERT INTO auth_changes AS c (user_id, epoch) VALUES (changed, bumped)
        ON CONFLICT (user_id) DO UPDATE SET epoch = EXCLUDED.epoch;
END
$$
"""


def _sqlite_trigger(
    name: str, event: str, table: str, when: str | None, users: tuple[str, ...]
) -> str:
    condition = f"WHEN {when.format(same='', distinct='NOT')} " if when else ""
    body = "".join(_SQLITE_CHANGE.format(user=user) for user in users)
    return f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW {condition}BEGIN{body}END"


def _postgres_trigger(
    name: str, event: str, table: str, when: str | None, users: tuple[str, ...]
) -> list[str]:
    calls = "".join(f"    PERFORM auth_changed({user});\n" for user in users)
    function = (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n{calls}"
        "    RETURN NULL;\nEND\n$$"
    )
    condition = (
        f"WHEN ({when.format(same='NOT DISTINCT FROM', distinct='DISTINCT FROM')}) " if when else ""
    )
    trigger = (
        f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW {condition}"
        f"EXECUTE FUNCTION {name}()"
    )
    return [function, trigger]


def upgrade() -> None:
    op.create_table(
        "auth_epoch",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_epoch")),
    )
    op.create_table(
        "auth_changes",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_auth_changes")),
    )
    with op.batch_alter_table("auth_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_changes_epoch"), ["epoch"], unique=False)
    op.execute("INSERT INTO auth_epoch (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == "sqlite":
        for trigger in TRIGGERS:
            op.execute(_sqlite_trigger(*trigger))
    else:
        op.execute(_POSTGRES_FUNCTION)
        for trigger in TRIGGERS:
            for statement in _postgres_trigger(*trigger):
                op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for name, _, table, _, _ in TRIGGERS:
        if sqlite:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    if not sqlite:
        op.execute("DROP FUNCTION IF EXISTS auth_changed(uuid)")
    with op.batch_alter_table("auth_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_changes_epoch"))
    op.drop_table("auth_changes")
    op.drop_table("auth_epoch")
