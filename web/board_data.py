"""The board's reads (挂图作战): filters, aggregates and pages over the `tasks` read model.

Every query carries the viewer's visibility on the plan shown (`web.access.visible`) and is
shaped to walk an index (migration 0004), whatever the plan's size:

- counts (per township, per unit, per task, in all) read covering indexes only, never rows;
- lists are LIMIT/OFFSET walks in index order; names and titles are fetched for the rows
  shown only (a correlated LIMIT 1 per group, or the page's own rows);
- the plans and the filter's choices are read by loose index scans (the next distinct value
  after the last one: one index probe per value, not one per row);
- whatever a page needs about its rows (rungs reached, extensions, nodes' history) is fetched
  for the page's task ids in one query, never one per row.

Urgency order (red, yellow, green; higher level first; earliest next due first; tasks without
an open due last) is not one column, so a page in that order is read segment by segment: one
GROUP BY counts the rows of each (light, level) segment and how many have a due, then only the
segments the page overlaps are read, each an index range in (next_due_at, task_id) order.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import structlog
from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    Text,
    and_,
    case,
    func,
    or_,
    select,
    text,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from infra.db.engine import write_options
from infra.db.models import EventRow, NoticeRow, TaskRow
from web.access import visible
from web.auth import Viewer

log = structlog.get_logger("duban.web")

tasks_t: Table = TaskRow.__table__  # type: ignore[assignment]
events_t: Table = EventRow.__table__  # type: ignore[assignment]
notices_t: Table = NoticeRow.__table__  # type: ignore[assignment]

LIGHTS = ("red", "yellow", "green")  # urgency order
DONE_STATUSES = ("completed", "closed")
PAGE_SIZE = 50
COUNTY = "-"  # the township filter's value for county-level units (区直单位: no township)
# The level filter's choices (督办层级 ≥ n); ladders use levels 1..5 (LadderStep allows 9).
LEVEL_OPTIONS = [(n, f"{n}级及以上") for n in range(1, 6)]


# --- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The board's GET filters. Values that cannot be right (an unknown light, a level that is
    not a number) are dropped rather than refused: a hand-edited URL shows the whole board."""

    plan: str
    township: str | None = None  # a township code, or COUNTY
    task: str | None = None  # task code within the plan
    light: str | None = None
    level: int | None = None  # the lowest level shown (督办层级 ≥ level)
    q: str | None = None  # free text: task title, unit or township name, unit code

    @classmethod
    def parse(cls, plan: str, params: Mapping[str, str]) -> Filters:
        def value(name: str, limit: int = 100) -> str | None:
            raw = (params.get(name) or "").strip()
            return raw[:limit] or None

        light = value("light")
        level_text = value("level")
        level = int(level_text) if level_text and level_text.isdigit() else None
        return cls(plan=plan, township=value("township"), task=value("task"),
                   light=light if light in LIGHTS else None,
                   level=level if level is not None and 0 < level <= 9 else None,
                   q=value("q", 200))

    def conditions(self) -> list[ColumnElement[bool]]:
        """The filters beside the plan (the plan goes with the viewer's visibility)."""
        c = tasks_t.c
        out: list[ColumnElement[bool]] = []
        if self.township == COUNTY:
            out.append(c.township.is_(None))
        elif self.township:
            out.append(c.township == self.township)
        if self.task:
            out.append(c.task_code == self.task)
        if self.light:
            out.append(c.light == self.light)
        if self.level:
            out.append(c.level >= self.level)
        if self.q:
            out.append(or_(c.title.contains(self.q, autoescape=True),
                           c.unit_name.contains(self.q, autoescape=True),
                           c.township_name.contains(self.q, autoescape=True),
                           c.unit_code == self.q))
        return out

    def params(self, **override: Any) -> dict[str, str]:
        values: dict[str, Any] = {"plan": self.plan, "township": self.township,
                                  "task": self.task, "light": self.light, "level": self.level,
                                  "q": self.q}
        values.update(override)
        return {k: str(v) for k, v in values.items() if v not in (None, "")}

    def query(self, **override: Any) -> str:
        """The filters as a query string (page links, the other views, the export)."""
        return urlencode(self.params(**override))

    @property
    def active(self) -> bool:
        return any((self.township, self.task, self.light, self.level, self.q))


def describe(f: Filters, towns: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> str:
    """The filters in words (the export's heading, the printed board's)."""
    from web.templating import LIGHT_LABELS

    parts = []
    if f.township:
        parts.append("乡镇：" + next((t["name"] for t in towns if t["code"] == f.township),
                                    f.township))
    if f.task:
        parts.append("任务：" + next((t["title"] for t in tasks if t["task_code"] == f.task),
                                    f.task))
    if f.light:
        parts.append("灯色：" + LIGHT_LABELS.get(f.light, f.light))
    if f.level:
        parts.append(f"督办层级：{f.level}级及以上")
    if f.q:
        parts.append(f"检索：{f.q}")
    return "；".join(parts) or "全部"


@dataclass(frozen=True)
class Scope:
    """What a request shows: the plans the viewer sees, the plan shown and the filters."""

    viewer: Viewer
    plans: list[dict[str, str]]
    plan: dict[str, str] | None
    filters: Filters

    @property
    def plan_cond(self) -> ColumnElement[bool]:
        """The plan's tasks the viewer sees, no other filter (the plan's totals, choices)."""
        return visible(self.viewer, self.filters.plan)

    @property
    def cond(self) -> ColumnElement[bool]:
        return and_(self.plan_cond, *self.filters.conditions())


def scope(conn: Connection, viewer: Viewer, params: Mapping[str, str]) -> Scope:
    """The plan asked for if the viewer sees any of its tasks, else the first one it does."""
    ps = plans(conn, viewer)
    asked = (params.get("plan") or "").strip()
    plan = next((p for p in ps if p["code"] == asked), ps[0] if ps else None)
    return Scope(viewer=viewer, plans=ps, plan=plan,
                 filters=Filters.parse(plan["code"] if plan else "", params))


# --- paging ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    size: int
    total: int

    @classmethod
    def of(cls, raw: str | None, total: int, size: int | None = None) -> Page:
        """Page `raw` of `total` rows; a page past the end shows the last one."""
        size = size or PAGE_SIZE
        number = int(raw) if raw and raw.isdigit() else 1
        pages = max(1, math.ceil(total / size))
        return cls(number=min(max(1, number), pages), size=size, total=total)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def first_item(self) -> int:
        return self.offset + 1 if self.total else 0

    @property
    def last_item(self) -> int:
        return min(self.total, self.offset + self.size)

    def links(self, window: int = 3) -> list[int | None]:
        """Page numbers to link: the first, the last, and `window` around the current one;
        None where numbers are skipped (shown as …)."""
        keep = {1, self.pages, *range(self.number - window, self.number + window + 1)}
        out: list[int | None] = []
        for n in range(1, self.pages + 1):
            if n in keep:
                out.append(n)
            elif out and out[-1] is not None:
                out.append(None)
        return out


# --- plans and choices (loose index scans) ---------------------------------------------------

# The distinct values of a column, each found by one index probe after the previous one
# ("loose index scan"; the same SQL on SQLite and PostgreSQL). {col} is a fixed column name.
_DISTINCT_PLANS = """
WITH RECURSIVE v(x) AS (
  SELECT (SELECT min(plan_code) FROM tasks)
  UNION ALL
  SELECT (SELECT min(plan_code) FROM tasks WHERE plan_code > v.x) FROM v WHERE v.x IS NOT NULL
)
SELECT x, (SELECT t.task_id FROM tasks t WHERE t.plan_code = v.x LIMIT 1) FROM v
WHERE x IS NOT NULL
"""
_DISTINCT_IN_PLAN = """
WITH RECURSIVE v(x) AS (
  SELECT (SELECT min({col}) FROM tasks WHERE plan_code = :plan)
  UNION ALL
  SELECT (SELECT min({col}) FROM tasks WHERE plan_code = :plan AND {col} > v.x)
  FROM v WHERE v.x IS NOT NULL
)
SELECT x, (SELECT t.{name} FROM tasks t WHERE t.plan_code = :plan AND t.{col} = v.x LIMIT 1)
FROM v WHERE x IS NOT NULL
"""


def plans(conn: Connection, viewer: Viewer) -> list[dict[str, str]]:
    """The plans with a task the viewer sees, each with its title (from a task's assignment)."""
    firsts: list[tuple[str, str]]
    if viewer.sees_all:
        firsts = [(str(r[0]), str(r[1])) for r in conn.execute(text(_DISTINCT_PLANS))]
    elif not viewer.unit:
        firsts = []
    else:
        # Its own unit's plans and its lead unit's, each along its own (unit, plan) index.
        c = tasks_t.c
        found: dict[str, str] = {}
        for col in (c.unit_code, c.lead_unit):
            for code, task_id in conn.execute(select(c.plan_code, func.min(c.task_id))
                                              .where(col == viewer.unit).group_by(c.plan_code)):
                found[code] = min(task_id, found.get(code, task_id))
        firsts = sorted(found.items())
    titles: dict[str, str] = {}
    if firsts:
        e = events_t.c
        raw = conn.execute(select(e.task_id, sql_cast(e.payload, Text))
                           .where(e.task_id.in_([t for _, t in firsts]), e.seq == 1)).all()
        by_task = {r[0]: json.loads(r[1]) for r in raw}
        for code, task_id in firsts:
            spec = by_task.get(task_id, {}).get("spec", {})
            titles[code] = str(spec.get("plan_title") or code)
    return [{"code": code, "title": titles.get(code, code)} for code, _ in firsts]


def township_options(conn: Connection, sc: Scope) -> list[dict[str, Any]]:
    """The townships of the plan the viewer sees (COUNTY for county-level units), in order."""
    c = tasks_t.c
    if sc.viewer.sees_all:
        rows = [(r[0], r[1]) for r in conn.execute(
            text(_DISTINCT_IN_PLAN.format(col="township", name="township_name")),
            {"plan": sc.filters.plan})]
        if conn.execute(select(c.task_id).where(sc.plan_cond, c.township.is_(None))
                        .limit(1)).first() is not None:
            rows.insert(0, (None, None))
    else:
        rows = [(r[0], r[1]) for r in conn.execute(
            select(c.township, func.max(c.township_name)).where(sc.plan_cond)
            .group_by(c.township).order_by(c.township))]
    return [{"code": code or COUNTY, "name": name or "区直单位"} for code, name in rows]


def task_options(conn: Connection, sc: Scope) -> list[dict[str, Any]]:
    """The tasks (task codes) of the plan the viewer sees, with their titles, in code order."""
    c = tasks_t.c
    if sc.viewer.sees_all:
        rows = [(r[0], r[1]) for r in conn.execute(
            text(_DISTINCT_IN_PLAN.format(col="task_code", name="title")),
            {"plan": sc.filters.plan})]
    else:
        rows = [(r[0], r[1]) for r in conn.execute(
            select(c.task_code, func.max(c.title)).where(sc.plan_cond)
            .group_by(c.task_code).order_by(c.task_code))]
    return [{"task_code": code, "title": title} for code, title in rows]


# --- counts ----------------------------------------------------------------------------------


def _counts() -> list[Any]:
    c = tasks_t.c
    return [
        func.count().label("tasks"),
        *(func.sum(case((c.light == light, 1), else_=0)).label(light) for light in LIGHTS),
        func.sum(case((c.status.in_(DONE_STATUSES), 1), else_=0)).label("done"),
    ]


def _with_rate(row: Any) -> dict[str, Any]:
    d = dict(row)
    for k in ("tasks", "done", *LIGHTS):
        d[k] = int(d.get(k) or 0)
    d["completion"] = rate(d["done"], d["tasks"])
    return d


def rate(done: int, total: int) -> float:
    """完成率 in percent, one decimal (0.0 for no tasks)."""
    return round(100 * done / total, 1) if total else 0.0


def totals(conn: Connection, cond: ColumnElement[bool]) -> dict[str, Any]:
    row = conn.execute(select(*_counts()).where(cond)).mappings().one()
    out = _with_rate(row)
    # 逾期未反馈: notices neither signed for nor answered by their 反馈时限 (apart from the
    # counts above, which the covering indexes answer alone).
    missed = select(func.coalesce(func.sum(tasks_t.c.missed_replies), 0)).where(
        cond, tasks_t.c.missed_replies > 0)
    out["missed_replies"] = int(conn.execute(missed).scalar_one())
    return out


def _name_of(column: str, name: str, plan: str) -> Any:
    """The name beside a grouped code, read from one row of the group (not max over all)."""
    t2 = tasks_t.alias("named")
    return (select(t2.c[name]).where(t2.c.plan_code == plan, t2.c[column] == tasks_t.c[column])
            .limit(1).scalar_subquery())


def townships(conn: Connection, sc: Scope, offset: int = 0,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Per township (乡镇/街道; None = county-level units): counts and 完成率, in code order."""
    c = tasks_t.c
    q = (select(c.township, _name_of("township", "township_name", sc.filters.plan)
                .label("township_name"), *_counts())
         .where(sc.cond).group_by(c.township).order_by(c.township))
    if limit is not None:
        q = q.limit(limit).offset(offset)
    return [_with_rate(r) for r in conn.execute(q).mappings()]


def count_townships(conn: Connection, cond: ColumnElement[bool]) -> int:
    c = tasks_t.c
    sub = select(c.township).where(cond).group_by(c.township).subquery()
    return int(conn.execute(select(func.count()).select_from(sub)).scalar_one())


def task_columns(conn: Connection, sc: Scope) -> list[dict[str, Any]]:
    """Per task of the plan (task code): title, ladder, counts and 完成率, in code order."""
    c = tasks_t.c
    plan = sc.filters.plan
    rows = conn.execute(select(c.task_code, _name_of("task_code", "title", plan).label("title"),
                               _name_of("task_code", "ladder", plan).label("ladder"), *_counts())
                        .where(sc.cond).group_by(c.task_code).order_by(c.task_code)).mappings()
    return [_with_rate(r) for r in rows]


def unit_rows(conn: Connection, cond: ColumnElement[bool], offset: int,
              limit: int) -> list[dict[str, Any]]:
    """A page of the grid's rows: responsible units in (township, unit) order, with counts
    (names come with the page's cells)."""
    c = tasks_t.c
    q = (select(c.township, c.unit_code, *_counts())
         .where(cond).group_by(c.township, c.unit_code).order_by(c.township, c.unit_code)
         .limit(limit).offset(offset))
    return [_with_rate(r) for r in conn.execute(q).mappings()]


def count_units(conn: Connection, cond: ColumnElement[bool]) -> int:
    c = tasks_t.c
    sub = select(c.township, c.unit_code).where(cond).group_by(c.township, c.unit_code).subquery()
    return int(conn.execute(select(func.count()).select_from(sub)).scalar_one())


def cells(conn: Connection, cond: ColumnElement[bool],
          units: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The grid's cells for a page of units: (unit, task code) → the task row's board fields.
    Fills in each unit's name and township name on `units`."""
    if not units:
        return {}
    c = tasks_t.c
    q = select(c.task_id, c.task_code, c.unit_code, c.unit_name, c.township_name, c.light,
               c.status, c.level, c.progress, c.next_due_at).where(
        cond, c.unit_code.in_([u["unit_code"] for u in units]))
    out = {(r["unit_code"], r["task_code"]): dict(r) for r in conn.execute(q).mappings()}
    names = {k[0]: v for k, v in out.items()}
    for u in units:
        row = names.get(u["unit_code"], {})
        u["unit_name"] = row.get("unit_name") or u["unit_code"]
        u["township_name"] = row.get("township_name")
    return out


# --- urgency-ordered pages -------------------------------------------------------------------

LIST_COLUMNS = ("task_id", "plan_code", "task_code", "unit_code", "unit_name", "township",
                "township_name", "title", "lead_unit", "ladder", "status", "light", "level",
                "progress", "next_due_at", "open_findings")

Segment = tuple[str, int, bool, int]  # (light, level, has a due, rows)


def segments(conn: Connection, cond: ColumnElement[bool]) -> list[Segment]:
    """Every non-empty urgency segment, in urgency order (their rows add up to the total).
    Grouped by (light, level) only, in the urgency index's own order; count(next_due_at)
    splits each group into the rows with a due and those without."""
    c = tasks_t.c
    rows = conn.execute(select(c.light, c.level, func.count().label("n"),
                               func.count(c.next_due_at).label("due"))
                        .where(cond).group_by(c.light, c.level)).all()
    rank = {light: i for i, light in enumerate(LIGHTS)}
    segs: list[Segment] = []
    for r in sorted(rows, key=lambda r: (rank.get(r.light, len(LIGHTS)), r.light, -r.level)):
        due, n = int(r.due), int(r.n)
        if due:
            segs.append((str(r.light), int(r.level), True, due))
        if n - due:
            segs.append((str(r.light), int(r.level), False, n - due))
    return segs


_URGENCY = case({light: i for i, light in enumerate(LIGHTS)}, value=tasks_t.c.light,
                else_=len(LIGHTS))


def by_urgency(conn: Connection, sc: Scope, segs: list[Segment], offset: int, limit: int,
               columns: tuple[str, ...] = LIST_COLUMNS) -> list[dict[str, Any]]:
    """A page of `sc`'s task rows in urgency order; `segs` from `segments(conn, sc.cond)`.

    A viewer who sees everything reads the page segment by segment along the urgency index.
    A unit's viewer sees its own unit's tasks and those it leads: read along those two indexes
    and sorted, which is cheaper than walking the plan's urgency index for a few rows."""
    c = tasks_t.c
    cond = sc.cond
    if not sc.viewer.sees_all:
        few = (select(*(c[k] for k in columns)).where(cond)
               .order_by(_URGENCY, c.level.desc(), case((c.next_due_at.is_(None), 1), else_=0),
                         c.next_due_at, c.task_id).limit(limit).offset(offset))
        return [dict(r) for r in conn.execute(few).mappings()]
    out: list[dict[str, Any]] = []
    skip = offset
    for light, level, due, n in segs:
        if len(out) >= limit:
            break
        if skip >= n:
            skip -= n
            continue
        seg = and_(cond, c.light == light, c.level == level,
                   c.next_due_at.is_not(None) if due else c.next_due_at.is_(None))
        q: Select[Any] = select(*(c[k] for k in columns)).where(seg)
        q = q.order_by(c.next_due_at, c.task_id) if due else q.order_by(c.task_id)
        q = q.limit(limit - len(out)).offset(skip)
        out.extend(dict(r) for r in conn.execute(q).mappings())
        skip = 0
    return out


def _late(cond: ColumnElement[bool], now: dt.datetime) -> ColumnElement[bool]:
    c = tasks_t.c
    return and_(cond, c.next_due_at.is_not(None), c.next_due_at < now)


def count_overdue(conn: Connection, cond: ColumnElement[bool], now: dt.datetime) -> int:
    return int(conn.execute(select(func.count()).where(_late(cond, now))).scalar_one())


def overdue(conn: Connection, cond: ColumnElement[bool], now: dt.datetime, offset: int,
            limit: int) -> list[dict[str, Any]]:
    """Active tasks whose earliest open node is past due, most days late first, each with
    its days late and the highest rung it reached."""
    c = tasks_t.c
    q = (select(*(c[k] for k in LIST_COLUMNS)).where(_late(cond, now))
         .order_by(c.next_due_at, c.task_id).limit(limit).offset(offset))
    return with_steps(conn, [dict(r) for r in conn.execute(q).mappings()], now)


def with_steps(conn: Connection, rows: list[dict[str, Any]],
               now: dt.datetime) -> list[dict[str, Any]]:
    """`rows` with days late and the rung reached (one query for all of them)."""
    steps = rungs_reached(conn, [r["task_id"] for r in rows])
    for r in rows:
        r["days_late"] = days_late(r["next_due_at"], now)
        r["step"] = steps.get(r["task_id"])
    return rows


def days_late(due: dt.datetime | None, now: dt.datetime) -> int:
    """Whole days past due, a part day counting as one (0 when not late)."""
    if due is None or due >= now:
        return 0
    return math.ceil((now - due) / dt.timedelta(days=1))


def rungs_reached(conn: Connection, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per task, the highest rung it reached (a 督办单 issued), the latest on a tie: one
    query for the page's tasks."""
    if not task_ids:
        return {}
    n = notices_t.c
    rows = conn.execute(select(n.task_id, n.ladder, n.step, n.level, n.node, n.id)
                        .where(n.task_id.in_(task_ids))
                        .order_by(n.task_id, n.level, n.id)).mappings()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:  # ascending: the last one per task wins
        out[r["task_id"]] = {**dict(r), "title": step_title(r["ladder"], r["step"])}
    return out


# --- ladders (labels) ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _ladders() -> dict[str, Any]:
    from planfiles.ladders import load_ladders

    return dict(load_ladders())


def step_title(ladder: str, step: str) -> str:
    lad = _ladders().get(ladder)
    if lad is not None:
        for s in lad.steps:
            if s.code == step:
                return str(s.title)
    return step


def ladder_legend(codes: list[str]) -> list[dict[str, Any]]:
    """The ladders named, each with its rungs (level → title), for the legend."""
    out = []
    for code in sorted({c for c in codes if c}):
        lad = _ladders().get(code)
        if lad is not None:
            out.append({"code": code, "title": lad.title,
                        "steps": [{"level": s.level, "title": s.title} for s in lad.steps]})
    return out


# --- statistics (SQLite) ---------------------------------------------------------------------

_OPTIMIZE_EVERY = 3600.0  # seconds
_optimized: dict[str, float] = {}


def keep_statistics(conn: Connection) -> None:
    """On SQLite, `PRAGMA optimize` at most once an hour, after a board's queries on the same
    connection (it analyses the tables those queries used when their statistics are missing
    or stale, as SQLite recommends). Without statistics SQLite's planner guesses that every
    index is selective and can walk a whole plan for a township's rows; PostgreSQL keeps its
    own statistics (autovacuum). A busy database just skips a turn."""
    if conn.dialect.name != "sqlite":
        return
    key = str(conn.engine.url)
    moment = time.monotonic()
    if moment - _optimized.get(key, -_OPTIMIZE_EVERY) < _OPTIMIZE_EVERY:
        return
    _optimized[key] = moment
    conn.commit()  # end the read transaction; the statistics are a (small) write
    try:
        with conn.execution_options(**write_options()).begin():
            conn.exec_driver_sql("PRAGMA optimize")
    except OperationalError as exc:  # busy: the worker is writing; next time
        log.info("board.optimize_skipped", error=str(exc))


# --- whole sets (export) and a page's history (Gantt) ----------------------------------------


def all_rows(conn: Connection, cond: ColumnElement[bool],
             batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every matching row in (township, unit, task) order, streamed `batch` rows at a time."""
    c = tasks_t.c
    q = (select(*(c[k] for k in LIST_COLUMNS)).where(cond)
         .order_by(c.township, c.unit_code, c.task_code, c.task_id))
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(q)
    for r in result.mappings():
        yield dict(r)


def history(conn: Connection, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the Gantt view draws beside the nodes, for a page of tasks in two queries: when
    each task was assigned, its extension decisions, its rungs fired and its nodes accepted."""
    out: dict[str, dict[str, Any]] = {
        t: {"assigned_at": None, "extensions": [], "rungs": [], "accepted": []} for t in task_ids}
    if not task_ids:
        return out
    e = events_t.c
    for task_id, at in conn.execute(select(e.task_id, e.occurred_at)
                                    .where(e.task_id.in_(task_ids), e.seq == 1)):
        out[task_id]["assigned_at"] = at
    kinds = {"ExtensionDecided": "extensions", "EscalationFired": "rungs",
             "NodeAccepted": "accepted"}
    rows = conn.execute(select(e.task_id, e.type, e.occurred_at, sql_cast(e.payload, Text))
                        .where(e.task_id.in_(task_ids), e.type.in_(list(kinds)))
                        .order_by(e.task_id, e.seq))
    for task_id, type_, at, raw in rows:
        payload = json.loads(raw)
        payload["occurred_at"] = at
        out[task_id][kinds[type_]].append(payload)
    return out
