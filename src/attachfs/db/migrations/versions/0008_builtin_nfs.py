"""built-in shares of protocol NFS

Revision ID: 0008
Revises: 0007

A built-in share is LOCAL (a directory on the host) or NFS: the same directory, also served by
the host's NFS server to each client granted an access rule (transport direct).
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shares") as batch:
        batch.add_column(sa.Column("protocol", sa.String(16), nullable=False,
                                   server_default="LOCAL"))


def downgrade() -> None:
    with op.batch_alter_table("shares") as batch:
        batch.drop_column("protocol")
