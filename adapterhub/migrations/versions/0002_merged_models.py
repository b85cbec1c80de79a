"""merged model cache

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merged_models",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("adapter_digest", sa.String(length=64), nullable=False),
        sa.Column("base_fingerprint", sa.String(length=71), nullable=False),
        sa.Column("dtype", sa.String(length=16), nullable=False),
        sa.Column("shard_size", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merged_models")),
        sa.UniqueConstraint("adapter_digest", "base_fingerprint", "dtype", "shard_size", name="uq_merged_models_key"),
    )


def downgrade() -> None:
    op.drop_table("merged_models")
