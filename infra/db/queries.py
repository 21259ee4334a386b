"""Read-side queries of the board: the read models, filtered and ordered by urgency."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection, Engine

from infra.db.models import InspectionRow, TaskRow

tasks_t = TaskRow.__table__
inspections_t = InspectionRow.__table__

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


def task_counts(engine: Engine) -> list[dict[str, Any]]:
    """Tasks and their open findings per (plan, township, light, status): one GROUP BY over the
    `tasks` read model (the metrics' gauges; `ix_tasks_plan_town_unit` covers all but
    open_findings)."""
    q = select(tasks_t.c.plan_code, tasks_t.c.township, func.max(tasks_t.c.township_name)
               .label("township_name"), tasks_t.c.light, tasks_t.c.status,
               func.count().label("tasks"),
               func.coalesce(func.sum(tasks_t.c.open_findings), 0).label("open_findings"),
               func.coalesce(func.sum(tasks_t.c.missed_replies), 0).label("missed_replies"),
               ).group_by(tasks_t.c.plan_code, tasks_t.c.township, tasks_t.c.light,
                          tasks_t.c.status)
    with engine.connect() as conn:
        return [{**r._mapping, "tasks": int(r.tasks), "open_findings": int(r.open_findings),
                 "missed_replies": int(r.missed_replies)} for r in conn.execute(q)]


def inspection_counts(engine: Engine) -> list[dict[str, Any]]:
    """Inspections per (plan, outcome): one GROUP BY over `inspections` joined to `tasks`."""
    q = (select(tasks_t.c.plan_code, inspections_t.c.outcome,
                func.count().label("inspections"))
         .select_from(inspections_t.join(tasks_t, inspections_t.c.task_id == tasks_t.c.task_id))
         .group_by(tasks_t.c.plan_code, inspections_t.c.outcome))
    with engine.connect() as conn:
        return [{**r._mapping, "inspections": int(r.inspections)} for r in conn.execute(q)]
