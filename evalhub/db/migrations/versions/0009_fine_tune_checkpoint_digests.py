"""fine-tune checkpoint digests: checkpoints in the artifact store

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tune_checkpoints", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("fine_tune_checkpoints", schema=None) as batch_op:
        batch_op.drop_column("digest")
