"""The tamper-evident history: a hash chain over versions, alias events, aliases, tags and evaluations

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 06:00:00.000000
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("prev", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history")),
    )
    from adapterhub.registry import history

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history.snapshot(
        op.get_bind(),
        f"the history starts here (schema 0004, {when}): rows older than this "
        "entry are recorded as they were found then, not as they were written",
    )


def downgrade() -> None:
    op.drop_table("history")
