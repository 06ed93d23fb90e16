"""the transport of each attachment

Revision ID: 0007
Revises: 0006

How the host hands a share to the guest: virtiofs (what every earlier attachment is), 9p, or
nfs from the host's NFS server (core.rules.Transport).
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("share_mappings") as batch:
        batch.add_column(sa.Column("transport", sa.String(16), nullable=False,
                                   server_default="virtiofs"))


def downgrade() -> None:
    with op.batch_alter_table("share_mappings") as batch:
        batch.drop_column("transport")
