"""revocation list: index revoked jtis by revocation time, for incremental polls

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("revoked_jtis", schema=None) as batch_op:
        batch_op.create_index("ix_revoked_jtis_revoked_at", ["revoked_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("revoked_jtis", schema=None) as batch_op:
        batch_op.drop_index("ix_revoked_jtis_revoked_at")
