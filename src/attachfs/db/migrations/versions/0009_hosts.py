"""compute hosts: registration and heartbeat

Revision ID: 0009
Revises: 0008

Each agent registers its host (capabilities, size) and heartbeats; the API lists hosts as the
compute service's os-services and os-hypervisors, up or down by the heartbeat's age.
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("storage_address", sa.String(64), nullable=False),
        sa.Column("ceph_id", sa.String(255), nullable=False),
        sa.Column("transports", sa.JSON(), nullable=False),
        sa.Column("containers", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("hypervisor_type", sa.String(32), nullable=False),
        sa.Column("hypervisor_version", sa.Integer(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("disabled_reason", sa.String(255), nullable=True),
        sa.Column("forced_down", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hosts")
