"""导出 Excel: the board as a workbook, with the board's filters and the viewer's visibility.

Sheets: 挂图 (units × tasks, each cell filled in its light's colour), 任务清单 (every task
row), 乡镇完成率 (per township). Rows are streamed from the store into a write-only workbook,
so a province's plan exports without holding the whole board in memory twice.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from web import board_data as bd
from web.auth import ViewerDep, ctx_of
from web.templating import LIGHT_LABELS, STATUS_LABELS, local_time

router = APIRouter()

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# The board's colours (style.css --red/--yellow/--green), as ARGB hex without alpha.
LIGHT_FILLS = {"red": "D93025", "yellow": "F2B400", "green": "1E8E3E"}
LIGHT_TEXT = {"red": "FFFFFF", "yellow": "1F2328", "green": "FFFFFF"}
HEAD_FILL = PatternFill(fill_type="solid", fgColor="8B0000")
HEAD_FONT = Font(bold=True, color="FFFFFF")


HEAD_ALIGN = Alignment(horizontal="center", vertical="center", wrap_text=True)
CENTRED = Alignment(horizontal="center")
BOLD = Font(bold=True)


@cache
def _fill(light: str) -> PatternFill:
    return PatternFill(fill_type="solid", fgColor=LIGHT_FILLS.get(light, "FFFFFF"))


@cache
def _light_font(light: str, bold: bool) -> Font:
    return Font(color=LIGHT_TEXT.get(light, "000000"), bold=bold)


def _cell(ws: WriteOnlyWorksheet, value: Any, light: str | None = None,
          head: bool = False, bold: bool = False) -> WriteOnlyCell:
    # Styles are shared objects, not made per cell: building them was half an export's time.
    cell = WriteOnlyCell(ws, value=value)
    if light:
        cell.fill = _fill(light)
        cell.font = _light_font(light, bold)
        cell.alignment = CENTRED
    elif head:
        cell.fill = HEAD_FILL
        cell.font = HEAD_FONT
        cell.alignment = HEAD_ALIGN
    elif bold:
        cell.font = BOLD
    return cell


def build_workbook(conn: Any, sc: bd.Scope, moment: Any) -> bytes:
    cond = sc.cond
    wb = Workbook(write_only=True)
    columns = bd.task_columns(conn, sc)
    town_opts = bd.township_options(conn, sc)
    task_opts = bd.task_options(conn, sc)
    summary = bd.totals(conn, cond)
    title = sc.plan["title"] if sc.plan else sc.filters.plan

    grid = wb.create_sheet("挂图")
    grid.freeze_panes = "C5"
    grid.column_dimensions["A"].width = 14
    grid.column_dimensions["B"].width = 22
    grid.append([_cell(grid, f"{title} · 挂图作战", bold=True)])
    grid.append([f"筛选：{bd.describe(sc.filters, town_opts, task_opts)}",
                 f"导出时间：{local_time(moment)}",
                 f"任务 {summary['tasks']} 项，已完成 {summary['done']} 项，"
                 f"完成率 {summary['completion']}%"])
    grid.append([f"图例：{LIGHT_LABELS['green']}", _cell(grid, "绿", "green"),
                 _cell(grid, "黄", "yellow"), _cell(grid, "红", "red"), "单元格：灯色 进度"])
    grid.append([_cell(grid, "乡镇（街道）", head=True), _cell(grid, "责任单位", head=True),
                 *(_cell(grid, f"{c['task_code']} {c['title']}", head=True) for c in columns),
                 _cell(grid, "任务数", head=True), _cell(grid, "已完成", head=True),
                 _cell(grid, "完成率", head=True)])
    index = {c["task_code"]: i for i, c in enumerate(columns)}

    tasks = wb.create_sheet("任务清单")
    tasks.freeze_panes = "A2"
    heads = ["任务编号", "任务", "乡镇（街道）", "责任单位", "牵头单位", "状态", "灯色",
             "督办层级", "进度(%)", "下一节点期限", "未整改问题", "任务实例"]
    tasks.append([_cell(tasks, h, head=True) for h in heads])

    def flush(unit: dict[str, Any] | None, cells: list[Any]) -> None:
        if unit is None:
            return
        done = unit["done"]
        grid.append([unit["township_name"] or "区直单位", unit["unit_name"] or unit["unit_code"],
                     *cells, unit["tasks"], done, f"{bd.rate(done, unit['tasks'])}%"])

    current: dict[str, Any] | None = None
    row_cells: list[Any] = []
    for r in bd.all_rows(conn, cond):
        if current is None or current["unit_code"] != r["unit_code"]:
            flush(current, row_cells)
            current = {"unit_code": r["unit_code"], "unit_name": r["unit_name"],
                       "township_name": r["township_name"], "tasks": 0, "done": 0}
            row_cells = [None] * len(columns)
        current["tasks"] += 1
        current["done"] += r["status"] in bd.DONE_STATUSES
        i = index.get(r["task_code"])
        if i is not None:
            done = r["status"] in bd.DONE_STATUSES
            text = f"{LIGHT_LABELS.get(r['light'], r['light'])} {'完成' if done else str(r['progress']) + '%'}"
            row_cells[i] = _cell(grid, text, r["light"])
        tasks.append([
            r["task_code"], r["title"], r["township_name"] or "区直单位",
            r["unit_name"] or r["unit_code"], r["lead_unit"],
            STATUS_LABELS.get(r["status"], r["status"]),
            _cell(tasks, LIGHT_LABELS.get(r["light"], r["light"]), r["light"]),
            r["level"], r["progress"],
            local_time(r["next_due_at"]) if r["next_due_at"] else "", r["open_findings"],
            r["task_id"],
        ])
    flush(current, row_cells)
    grid.append(["合计", "", *(f"完成率 {c['completion']}%" for c in columns),
                 summary["tasks"], summary["done"], f"{summary['completion']}%"])

    towns = wb.create_sheet("乡镇完成率")
    towns.append([_cell(towns, h, head=True) for h in
                  ("乡镇（街道）", "任务数", "绿灯", "黄灯", "红灯", "已完成", "完成率")])
    for t in bd.townships(conn, sc):
        towns.append([t["township_name"] or "区直单位", t["tasks"],
                      _cell(towns, t["green"], "green"), _cell(towns, t["yellow"], "yellow"),
                      _cell(towns, t["red"], "red"), t["done"], f"{t['completion']}%"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@router.get("/export.xlsx")
def export_board(request: Request, viewer: ViewerDep) -> Response:
    params = dict(request.query_params)
    moment = ctx_of(request).clock()
    with ctx_of(request).engine.connect() as conn:
        sc = bd.scope(conn, viewer, params)
        body = build_workbook(conn, sc, moment)
    name = f"挂图作战-{sc.filters.plan or '无任务'}-{local_time(moment, '%Y%m%d-%H%M')}.xlsx"
    return Response(body, media_type=XLSX, headers={
        "Content-Disposition": f"attachment; filename=\"board.xlsx\"; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "no-store",
    })
