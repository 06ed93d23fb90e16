"""hot plug slots, read-only attachments, config drive

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("config_drive", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("share_slots", sa.Integer(), nullable=True))
    with op.batch_alter_table("share_mappings") as batch:
        batch.add_column(sa.Column("read_only", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("share_mappings") as batch:
        batch.drop_column("read_only")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("share_slots")
        batch.drop_column("config_drive")
