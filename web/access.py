"""What a viewer may see (可见范围): one SQL condition on the `tasks` table, used by every page.

A viewer whose roles see everything (督查组, 审计, 督查办, 领导, 纪委) sees every task; anyone
else sees the tasks of its own unit and the tasks its unit leads (牵头). Every list, count,
search, Gantt row and export is filtered by the same condition, so nothing outside it can be
counted, found or downloaded. A task outside it answers exactly like a missing one (404), so
its existence is not revealed either.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sqlalchemy import ColumnElement, Table, and_, false, or_, select, true
from sqlalchemy.engine import Connection, Engine

from infra.db.models import TaskRow
from web.auth import Viewer

tasks_t: Table = TaskRow.__table__  # type: ignore[assignment]


def visible(viewer: Viewer, plan: str | None = None) -> ColumnElement[bool]:
    """The tasks `viewer` may see (of `plan`, if given), as a condition on `tasks`.

    With a plan, a unit member's condition is written as (its unit and the plan) or (its lead
    unit and the plan), with no plan term outside: a planner then reads the two small index
    ranges instead of the whole plan's."""
    c = tasks_t.c
    if viewer.sees_all:
        return true() if plan is None else c.plan_code == plan
    if not viewer.unit:  # no unit on the roster: nothing of any unit's
        return false()
    if plan is None:
        return or_(c.unit_code == viewer.unit, c.lead_unit == viewer.unit)
    return or_(and_(c.unit_code == viewer.unit, c.plan_code == plan),
               and_(c.lead_unit == viewer.unit, c.plan_code == plan))


def visible_task_in(conn: Connection, viewer: Viewer, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(tasks_t).where(tasks_t.c.task_id == task_id, visible(viewer))
    ).mappings().first()
    return dict(row) if row is not None else None


def visible_task(engine: Engine, viewer: Viewer, task_id: str) -> dict[str, Any] | None:
    """The task's board row if `viewer` may see it, else None (missing or not visible alike)."""
    with engine.connect() as conn:
        return visible_task_in(conn, viewer, task_id)


def can_see(engine: Engine, viewer: Viewer, task_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(
            select(tasks_t.c.task_id).where(tasks_t.c.task_id == task_id, visible(viewer))
        ).first() is not None


def task_url(task_id: str) -> str:
    """The task page's path. Task ids hold slashes (PLAN/TASK/UNIT): kept as path separators
    (the route takes the whole rest of the path); anything else is percent-encoded."""
    return "/tasks/" + quote(task_id, safe="/")
