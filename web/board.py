"""挂图作战: the board of a plan (tasks × units by light, rates, the overdue list) and the task
list (任务清单), both filtered and paged; the Gantt view and the Excel export hang off the
same router (web/gantt.py, web/export.py).

Every query is limited to what the viewer may see (`web.access.visible`): a unit member's
board counts, lists and finds only its own unit's tasks and those it leads. The handlers are
plain functions: FastAPI runs them in its thread pool, so a province-wide count does not hold
up the event loop (and other requests) while the database works.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from service.delivery import delivery_counts
from web import board_data as bd
from web import export, gantt
from web.access import task_url
from web.auth import ViewerDep, ctx_of
from web.templating import TEMPLATES, render

router = APIRouter()
router.include_router(gantt.router)
router.include_router(export.router)

TASK_PAGE_SIZE = bd.PAGE_SIZE
# Who sees the count of undeliverable 督办单 on the board (they can act on it).
DELIVERY_WATCHERS = frozenset({"office", "supervisor"})


def percent(value: float) -> str:
    """完成率 as people write it: 96.3%, 100%, 0%."""
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


TEMPLATES.env.globals["task_url"] = task_url
TEMPLATES.env.filters["percent"] = percent


def _pages_query(filters: bd.Filters, pages: dict[str, int], **change: int) -> str:
    """A link's query: the filters, the other lists' current pages, and the page changed."""
    merged = {**pages, **change}
    return filters.query(**{k: v for k, v in merged.items() if v != 1})


@router.get("/", response_class=HTMLResponse)
def board_page(request: Request, viewer: ViewerDep) -> Response:
    params = dict(request.query_params)
    moment = ctx_of(request).clock()
    with ctx_of(request).engine.connect() as conn:
        sc = bd.scope(conn, viewer, params)
        if sc.plan is None:
            return render(request, "board.html", scope=sc, empty=True)
        cond = sc.cond
        summary = bd.totals(conn, cond)
        plan_totals = bd.totals(conn, sc.plan_cond) if sc.filters.active else summary
        tpage = bd.Page.of(params.get("tpage"), bd.count_townships(conn, cond))
        towns = bd.townships(conn, sc, tpage.offset, tpage.size)
        columns = bd.task_columns(conn, sc)
        upage = bd.Page.of(params.get("page"), bd.count_units(conn, cond))
        units = bd.unit_rows(conn, cond, upage.offset, upage.size)
        grid = bd.cells(conn, cond, units)
        opage = bd.Page.of(params.get("opage"), bd.count_overdue(conn, cond, moment))
        late = bd.overdue(conn, cond, moment, opage.offset, opage.size)
        town_options = bd.township_options(conn, sc)
        task_options = bd.task_options(conn, sc)
        # 送达失败: the plan's dead letters, for those who run the office (see service/delivery).
        dead_letters = (delivery_counts(conn, plan_code=sc.plan["code"])["dead"]
                        if viewer.roles & DELIVERY_WATCHERS else None)
        bd.keep_statistics(conn)
    pages = {"page": upage.number, "tpage": tpage.number, "opage": opage.number}
    return render(
        request, "board.html", scope=sc, empty=False, f=sc.filters, summary=summary,
        plan_totals=plan_totals, towns=towns, tpage=tpage, columns=columns, units=units,
        upage=upage, grid=grid, late=late, opage=opage, town_options=town_options,
        task_options=task_options, legend=bd.ladder_legend([c["ladder"] for c in columns]),
        filter_text=bd.describe(sc.filters, town_options, task_options),
        level_options=bd.LEVEL_OPTIONS, now=moment, dead_letters=dead_letters,
        link=lambda **change: _pages_query(sc.filters, pages, **change),
    )


@router.get("/tasks", response_class=HTMLResponse)
def task_list(request: Request, viewer: ViewerDep) -> Response:
    params = dict(request.query_params)
    moment = ctx_of(request).clock()
    rows: list[dict[str, Any]] = []
    page = bd.Page.of(None, 0, TASK_PAGE_SIZE)
    town_options: list[dict[str, Any]] = []
    task_options: list[dict[str, Any]] = []
    with ctx_of(request).engine.connect() as conn:
        sc = bd.scope(conn, viewer, params)
        if sc.plan is not None:
            segs = bd.segments(conn, sc.cond)  # the total, and where each page starts
            page = bd.Page.of(params.get("page"), sum(s[3] for s in segs), TASK_PAGE_SIZE)
            rows = bd.with_steps(
                conn, bd.by_urgency(conn, sc, segs, page.offset, page.size), moment)
            town_options = bd.township_options(conn, sc)
            task_options = bd.task_options(conn, sc)
            bd.keep_statistics(conn)
    return render(request, "tasks.html", scope=sc, f=sc.filters, rows=rows, page=page,
                  town_options=town_options, task_options=task_options,
                  level_options=bd.LEVEL_OPTIONS, now=moment,
                  link=lambda **change: sc.filters.query(**change))
