"""Initial schema: events (hash-chained record), read models, notices, outbox, archives.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Aware timestamps; infra.db.models.UTCDateTime normalises to UTC on top of this.
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("task_id", "seq", name="uq_events_task_seq"),
        sa.CheckConstraint("seq >= 1", name="ck_events_seq_positive"),
    )
    op.create_index("ix_events_task_id", "events", ["task_id"])

    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("plan_code", sa.String(100), nullable=False),
        sa.Column("task_code", sa.String(100), nullable=False),
        sa.Column("unit_code", sa.String(100), nullable=False),
        sa.Column("parent_unit", sa.String(100), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("lead_unit", sa.String(100), nullable=True),
        sa.Column("ladder", sa.String(100), nullable=True),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("light", sa.String(10), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("next_due_at", TS, nullable=True),
        sa.Column("nodes", sa.JSON(), nullable=False),
        sa.Column("open_findings", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_tasks"),
    )
    op.create_index("ix_tasks_plan_light", "tasks", ["plan_code", "light"])
    op.create_index("ix_tasks_unit", "tasks", ["unit_code"])
    op.create_index("ix_tasks_light", "tasks", ["light"])
    op.create_index("ix_tasks_status", "tasks", ["status"])

    op.create_table(
        "inspections",
        sa.Column("inspection_id", sa.String(100), nullable=False),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("inspector", sa.String(200), nullable=False),
        sa.Column("visited_at", TS, nullable=False),
        sa.Column("place", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("nodes", sa.JSON(), nullable=False),
        sa.Column("findings_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("inspection_id", "task_id", name="pk_inspections"),
    )

    op.create_table(
        "findings",
        sa.Column("finding_id", sa.String(100), nullable=False),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("inspection_id", sa.String(100), nullable=True),
        sa.Column("severity", sa.String(40), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("deadline", TS, nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("closed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("finding_id", "task_id", name="pk_findings"),
    )

    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("step_key", sa.String(200), nullable=False),
        sa.Column("node", sa.String(100), nullable=True),
        sa.Column("ladder", sa.String(100), nullable=False),
        sa.Column("step", sa.String(100), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("reply_by", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notices"),
        sa.UniqueConstraint("task_id", "step_key", name="uq_notices_task_step"),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("step_key", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(50), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint(
            "task_id", "step_key", "channel", "recipient", name="uq_outbox_task_step_to"
        ),
    )

    op.create_table(
        "archives",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("workflow_id", sa.String(300), nullable=False),
        sa.Column("run_id", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("history", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("archived_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_archives"),
        sa.UniqueConstraint("run_id", name="uq_archives_run_id"),
    )
    op.create_index("ix_archives_task_id", "archives", ["task_id"])


def downgrade() -> None:
    op.drop_table("archives")
    op.drop_table("outbox")
    op.drop_table("notices")
    op.drop_table("findings")
    op.drop_table("inspections")
    op.drop_table("tasks")
    op.drop_table("events")
