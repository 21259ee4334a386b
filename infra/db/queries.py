"""Read-side queries of the board: the read models, filtered and ordered by urgency."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection, Engine

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


_DONE = tasks_t.c.status.in_(("completed", "closed"))
LIGHTS = ("green", "yellow", "red")


def _rate(done: int, total: int) -> float:
    return round(100 * done / total, 1) if total else 0.0


def _grouped(conn: Connection, group: list[Any], plan_code: str | None) -> list[dict[str, Any]]:
    """Tasks, tasks per light and done tasks per (plan, *group): one SQL aggregate."""
    q = select(
        tasks_t.c.plan_code, *group, func.count().label("tasks"),
        *(func.sum(case((tasks_t.c.light == light, 1), else_=0)).label(light) for light in LIGHTS),
        func.sum(case((_DONE, 1), else_=0)).label("done"),
    ).group_by(tasks_t.c.plan_code, *group)
    if plan_code is not None:
        q = q.where(tasks_t.c.plan_code == plan_code)
    rows = []
    for r in conn.execute(q):
        d = {k: (int(v) if k in ("tasks", "done", *LIGHTS) else v) for k, v in r._mapping.items()}
        d["completion"] = _rate(d["done"], d["tasks"])
        rows.append(d)
    return rows


def board(engine: Engine, *, plan_code: str | None = None) -> list[dict[str, Any]]:
    """挂图作战, one entry per plan (in plan order): its totals and completion rate, and the
    lights (green/yellow/red counts) and completion rate per township (乡镇/街道: the
    responsible unit if it is one, else its parent township; None for county-level units) and
    per task (task code, within the plan: plans may reuse a code)."""
    with engine.connect() as conn:
        totals = _grouped(conn, [], plan_code)
        towns = _grouped(conn, [tasks_t.c.township, tasks_t.c.township_name], plan_code)
        tasks = _grouped(conn, [tasks_t.c.task_code], plan_code)
        named = select(tasks_t.c.plan_code, tasks_t.c.task_code,
                       func.max(tasks_t.c.title).label("title"))
        if plan_code is not None:
            named = named.where(tasks_t.c.plan_code == plan_code)
        titles = {(r.plan_code, r.task_code): r.title for r in conn.execute(
            named.group_by(tasks_t.c.plan_code, tasks_t.c.task_code))}
    out = []
    for t in sorted(totals, key=lambda r: r["plan_code"]):
        plan = t["plan_code"]
        out.append({
            **t,
            "townships": sorted((r for r in towns if r["plan_code"] == plan),
                                key=lambda r: (r["township"] is None, r["township"] or "")),
            "by_task": sorted(({**r, "title": titles[(plan, r["task_code"])]}
                               for r in tasks if r["plan_code"] == plan),
                              key=lambda r: r["task_code"]),
        })
    return out
