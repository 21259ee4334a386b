"""督办单 pages: the A4 print page (/notices/{id}) and its PDF (/notices/{id}.pdf).

Both say what was issued — the rung's own time, demand, 反馈时限 and number — read from the
notice's row and the task's record, never asked of Temporal. A notice of a task the viewer may
not see answers 404 exactly like a notice that does not exist (web/access.py).
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from activities.notice_document import NoticeRecord, NoticeSheet, notice_sheet, office_name
from activities.notice_pdf import sheet_pdf
from web.access import can_see, task_url
from web.auth import Viewer, ViewerDep, ctx_of
from web.context import WebContext
from web.task_pages import load_task
from web.templating import render

router = APIRouter()

NOT_FOUND = "没有这份督办单，或您无权查看"


def load_sheet(ctx: WebContext, viewer: Viewer, notice_id: int) -> NoticeSheet:
    """The notice's printed sheet, or 404 (missing and invisible answer alike)."""
    row = ctx.store.notice_by_id(notice_id)
    if row is None or not can_see(ctx.engine, viewer, row["task_id"]):
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    record = load_task(ctx, viewer, row["task_id"])
    office = office_name(ctx.engine, record.spec.plan_code)
    try:
        return notice_sheet(row, NoticeRecord(tuple(record.events), office))
    except LookupError as exc:  # a row without its rung in the record: for an auditor, not a page
        raise HTTPException(status_code=500,
                            detail="督办单与任务记录不符，请联系督查办核查") from exc


@router.get("/notices/{notice_id:int}.pdf")
async def notice_pdf_download(request: Request, viewer: ViewerDep, notice_id: int) -> Response:
    sheet = load_sheet(ctx_of(request), viewer, notice_id)
    # A few tens of milliseconds of layout: off the event loop.
    body = await asyncio.to_thread(sheet_pdf, sheet)
    title = f"{sheet.kind}{sheet.number}.pdf" if sheet.numbered else f"{sheet.kind}.pdf"
    return Response(body, media_type="application/pdf", headers={
        "Content-Disposition": (f'inline; filename="{sheet.file_name}"; '
                                f"filename*=UTF-8''{quote(title)}"),
        "Cache-Control": "private, no-store",
    })


@router.get("/notices/{notice_id:int}")
async def notice_page(request: Request, viewer: ViewerDep, notice_id: int) -> Response:
    sheet = load_sheet(ctx_of(request), viewer, notice_id)
    return render(request, "notice.html", sheet=sheet, notice_id=notice_id,
                  task_url=task_url(sheet.task_id))
