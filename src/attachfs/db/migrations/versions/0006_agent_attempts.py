"""the agent's attempts and last error on servers and attachments

Revision ID: 0006
Revises: 0005

A temporary failure is retried with backoff; how often it failed in a row and why is kept on
the row it concerns, so an attachment or server that does not progress shows the reason.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("servers", "share_mappings"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False,
                                       server_default=sa.text("0")))
            batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in ("servers", "share_mappings"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("last_error")
            batch.drop_column("attempts")
