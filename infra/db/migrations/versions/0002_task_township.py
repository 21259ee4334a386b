"""The board's townships: each task row names its unit and the township it counts under.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Rows written before this revision get the new columns empty; `starter.py store rebuild` fills
them from the events (the read models are a pure function of the record).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("unit_name", sa.Text(), nullable=True))
        batch.add_column(sa.Column("township", sa.String(100), nullable=True))
        batch.add_column(sa.Column("township_name", sa.Text(), nullable=True))
    op.create_index("ix_tasks_plan_township", "tasks", ["plan_code", "township"])


def downgrade() -> None:
    op.drop_index("ix_tasks_plan_township", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("township_name")
        batch.drop_column("township")
        batch.drop_column("unit_name")
