"""share names unique per namespace (a project's shares; the global shares) instead of globally

Revision ID: 0005
Revises: 0004

Existing rows already satisfy the new rule (globally unique names are unique per namespace).
The old constraint was created unnamed: PostgreSQL calls it shares_name_key, SQLite keeps it
anonymous, so its name is read from the database and SQLite's batch copy is given a naming
convention to find it by.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _name_constraint() -> str | None:
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints("shares"):
        if constraint["column_names"] == ["name"]:
            return constraint["name"] or "uq_shares_name"
    return None


def upgrade() -> None:
    old = _name_constraint()
    if old is not None:
        with op.batch_alter_table("shares", naming_convention=_CONVENTION) as batch:
            batch.drop_constraint(old, type_="unique")
    op.create_index("uniq_shares_project_name", "shares", ["project_id", "name"], unique=True,
                    sqlite_where=sa.text("scope != 'global'"),
                    postgresql_where=sa.text("scope != 'global'"))
    op.create_index("uniq_shares_global_name", "shares", ["name"], unique=True,
                    sqlite_where=sa.text("scope = 'global'"),
                    postgresql_where=sa.text("scope = 'global'"))


def downgrade() -> None:
    # Fails while two projects use one name: that is the rule being given back.
    op.drop_index("uniq_shares_global_name", table_name="shares")
    op.drop_index("uniq_shares_project_name", table_name="shares")
    with op.batch_alter_table("shares", naming_convention=_CONVENTION) as batch:
        batch.create_unique_constraint("uq_shares_name", ["name"])
