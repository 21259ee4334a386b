"""Read-side queries of the board: the read models, filtered and ordered by urgency."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, select
from sqlalchemy.engine import Engine

from infra.db.models import TaskRow

tasks_t = TaskRow.__table__

_URGENCY = case({"red": 0, "yellow": 1, "green": 2}, value=tasks_t.c.light, else_=3)


def list_tasks(engine: Engine, *, plan_code: str | None = None, task_code: str | None = None,
               unit_code: str | None = None, parent_unit: str | None = None,
               light: str | None = None, status: str | None = None,
               limit: int = 200) -> list[dict[str, Any]]:
    q = select(tasks_t)
    for col, value in (("plan_code", plan_code), ("task_code", task_code),
                       ("unit_code", unit_code), ("parent_unit", parent_unit),
                       ("light", light), ("status", status)):
        if value is not None:
            q = q.where(tasks_t.c[col] == value)
    q = q.order_by(_URGENCY, tasks_t.c.level.desc(), tasks_t.c.next_due_at,
                   tasks_t.c.task_id).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]
