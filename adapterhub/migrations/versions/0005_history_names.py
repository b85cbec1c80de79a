"""The history chain records adapter names too (renaming a name would move all its versions)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 06:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from adapterhub.registry import history
    from adapterhub.registry import schema as t

    conn = op.get_bind()
    for r in conn.execute(sa.select(t.adapters).order_by(t.adapters.c.id)):
        history.append(conn, "adapter", history.adapter(r))


def downgrade() -> None:
    pass  # the entries stay: the chain is append-only
