"""The board's indexes (挂图作战 in the web app): every list pages along an index and every
count reads a covering index, at the scale of a province's plan.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10

- tasks (plan, township, unit, light, status, level): per-township and per-unit counts, the
  grid's page of units;
- tasks (plan, task, light, status, level): per-task counts (the grid's columns);
- tasks (plan, light, level, next due, task id): pages in urgency order, one segment at a time;
- tasks (plan, next due, task id): the overdue list, most days late first;
- tasks (unit, plan) and (lead unit, plan): a unit member's visibility, its own unit's tasks
  and those it leads (the first replaces 0001's ix_tasks_unit on the unit alone);
- events (task, type): the Gantt view's extensions, rungs and acceptances of a page of tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASK_INDEXES = {
    "ix_tasks_plan_town_unit": ["plan_code", "township", "unit_code", "light", "status", "level"],
    "ix_tasks_plan_task": ["plan_code", "task_code", "light", "status", "level"],
    "ix_tasks_plan_urgency": ["plan_code", "light", "level", "next_due_at", "task_id"],
    "ix_tasks_plan_due": ["plan_code", "next_due_at", "task_id"],
    "ix_tasks_lead_unit": ["lead_unit", "plan_code"],
}


def upgrade() -> None:
    op.drop_index("ix_tasks_unit", table_name="tasks")
    op.create_index("ix_tasks_unit_plan", "tasks", ["unit_code", "plan_code"])
    for name, columns in TASK_INDEXES.items():
        op.create_index(name, "tasks", columns)
    op.create_index("ix_events_task_type", "events", ["task_id", "type"])


def downgrade() -> None:
    op.drop_index("ix_events_task_type", table_name="events")
    for name in reversed(TASK_INDEXES):
        op.drop_index(name, table_name="tasks")
    op.drop_index("ix_tasks_unit_plan", table_name="tasks")
    op.create_index("ix_tasks_unit", "tasks", ["unit_code"])
