"""share service locks: one row per external share, locked while its access rules change

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "share_service_locks",
        sa.Column("share_id", sa.String(36), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("share_service_locks")
