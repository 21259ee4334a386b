"""督查表单: the supervisor's 四不两直 form and a whole round uploaded as a sheet.

The supervisor's 四不两直 form (`/inspect`) is built for a phone: one column, large targets,
the camera for photos. A whole round can also be uploaded as a sheet (`/inspections/upload`,
`service.inspection_import`), each row answered with its verdict.

Both follow the task page's forms (`web.forms`): the actor is the signed-in supervisor (never
a form field; a sheet's row naming another inspector is refused), anyone else is refused with
403, the form's photos are stored only once the rest is valid, and the workflow decides.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from starlette.datastructures import FormData, UploadFile

from domain import commands as c
from domain import events as ev
from domain.plan import TaskSpec
from infra.db.models import EventRow, InspectionRow
from service.commands import CommandRefused, prepare, send_command
from web import evidence
from web.access import can_see, task_url, visible
from web.access import tasks_t as tasks_table
from web.auth import CsrfViewerDep, Viewer, ViewerDep, ctx_of, now
from web.context import WebContext
from web.form_fields import (
    FIELD_MESSAGES,
    commanding,
    done_url,
    form_files,
    refuse,
    store_files,
    wait_recorded,
)
from web.task_pages import REFUSAL_CODES, may
from web.templating import render

router = APIRouter()

INSPECT_ONLY = "只有督查组可以填写现场督查"
FINDING_SLOTS = 3
MAX_SHEET_BYTES = 5 * 1024 * 1024
OUTCOMES = ("达标", "基本达标", "不达标")
SEVERITIES = ("一般", "较重", "严重")
GEO = re.compile(r"^-?\d{1,3}(\.\d+)?,-?\d{1,3}(\.\d+)?$")


# --- 四不两直 on a phone -----------------------------------------------------------------------


@dataclass
class Candidate:
    task_id: str
    title: str
    unit_name: str
    status: str
    light: str
    nodes: list[dict[str, Any]]
    last_at: dt.datetime | None = None  # the task's latest recorded event


def _inspector(viewer: Viewer) -> None:
    commanding(viewer)
    if not viewer.is_supervisor:
        raise refuse(403, INSPECT_ONLY)


def _specs(ctx: WebContext, task_ids: list[str]) -> dict[str, TaskSpec]:
    """Each task's spec from its first event (TaskAssigned): one indexed row per task."""
    if not task_ids:
        return {}
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(EventRow.task_id, EventRow.payload).where(
            EventRow.task_id.in_(task_ids), EventRow.seq == 1)).all()
    out = {}
    for task_id, payload in rows:
        first = ev.parse_event(payload)
        if isinstance(first, ev.TaskAssigned):
            out[task_id] = first.spec
    return out


def _candidates(ctx: WebContext, viewer: Viewer, task_ids: list[str]) -> list[Candidate]:
    if not task_ids:
        return []
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(tasks_table).where(
            tasks_table.c.task_id.in_(task_ids), visible(viewer))).mappings().all()
    by_id = {r["task_id"]: r for r in rows}
    return [Candidate(t, by_id[t]["title"], by_id[t]["unit_name"] or by_id[t]["unit_code"],
                      by_id[t]["status"], by_id[t]["light"], list(by_id[t]["nodes"] or []),
                      by_id[t]["updated_at"])
            for t in task_ids if t in by_id]


def _search(ctx: WebContext, viewer: Viewer, q: str, limit: int = 20) -> list[Candidate]:
    """Tasks by id prefix (the primary key's range) or by unit code (indexed): no scan."""
    q = q.strip()
    if not q:
        return []
    cond = (tasks_table.c.task_id >= q) & (tasks_table.c.task_id < q + "\U0010ffff")
    with ctx.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(
            select(tasks_table.c.task_id).where(cond, visible(viewer))
            .order_by(tasks_table.c.task_id).limit(limit))]
        if len(ids) < limit:
            ids += [r[0] for r in conn.execute(
                select(tasks_table.c.task_id).where(tasks_table.c.unit_code == q, visible(viewer))
                .order_by(tasks_table.c.task_id).limit(limit - len(ids))) if r[0] not in ids]
    return _candidates(ctx, viewer, ids)


def _default_visit(ctx: WebContext, chosen: list[Candidate]) -> str:
    """The visit time the form starts with: now, in the zone of the tasks (read as such when
    sent). Never before what the tasks have already recorded: a clock behind the engine's
    (a test server's, skipped ahead) must not propose a visit before a task began."""
    moment = max([ctx.clock(), *(x.last_at for x in chosen if x.last_at is not None)])
    specs = _specs(ctx, [x.task_id for x in chosen[:1]])
    tz = next(iter(specs.values())).timezone if specs else "Asia/Shanghai"
    return moment.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M")


def _new_inspection_id() -> str:
    """Made when the form is shown, so that sending it twice records the visit once."""
    return f"xc{now():%y%m%d}-{secrets.token_hex(2)}"


def _render_inspect(request: Request, viewer: Viewer, *, selected: list[str], q: str = "",
                    values: dict[str, Any] | None = None, errors: dict[str, str] | None = None,
                    refusal: dict[str, str] | None = None, status_code: int = 200) -> Response:
    ctx = ctx_of(request)
    chosen = _candidates(ctx, viewer, selected)
    found = [x for x in _search(ctx, viewer, q) if x.task_id not in selected] if q else []
    vals = values or {}
    vals.setdefault("visited_at", _default_visit(ctx, chosen))
    vals.setdefault("inspection_id", _new_inspection_id())
    vals.setdefault("outcome", "")
    return render(request, "inspect.html", status_code=status_code, chosen=chosen, found=found,
                  q=q, selected=selected, values=vals, errors=errors or {}, refusal=refusal,
                  slots=range(FINDING_SLOTS), outcomes=OUTCOMES, severities=SEVERITIES,
                  add_url=lambda t: "/inspect?" + urlencode(
                      [("task", x) for x in [*selected, t]]),
                  drop_url=lambda t: "/inspect?" + urlencode(
                      [("task", x) for x in selected if x != t]))


@router.get("/inspect")
async def inspect_page(request: Request, viewer: ViewerDep, q: str = "") -> Response:
    _inspector(viewer)
    selected = list(dict.fromkeys(request.query_params.getlist("task")))[:20]
    return _render_inspect(request, viewer, selected=selected, q=q[:200])


@dataclass
class FindingDraft:
    slot: int
    severity: str
    description: str
    node: str
    photos: list[UploadFile]


def _inspect_values(form: FormData) -> dict[str, Any]:
    v: dict[str, Any] = {k: x.strip() for k, x in form.multi_items()
                         if isinstance(x, str) and k not in ("csrf", "task", "node")}
    v["nodes"] = [x for x in form.getlist("node") if isinstance(x, str)]
    return v


def _inspect_payload(spec: TaskSpec, v: dict[str, Any], drafts: list[FindingDraft],
                     visited: dt.datetime, actor: str) -> dict[str, Any]:
    nodes = [n.split("|", 1)[1] for n in v["nodes"] if n.startswith(spec.task_id + "|")]
    codes = {n.code for n in spec.nodes}
    findings = []
    for d in drafts:
        f: dict[str, Any] = {"severity": d.severity, "description": d.description}
        if d.node and d.node in codes:
            f["node"] = d.node
        findings.append(f)
    return {"actor": actor, "inspection_id": v.get("inspection_id", ""),
            "visited_at": visited.replace(tzinfo=ZoneInfo(spec.timezone)).isoformat(),
            "place": v.get("place", ""), "nodes": nodes, "outcome": v.get("outcome", ""),
            "findings": findings}


def _inspect_errors(exc: CommandRefused, drafts: list[FindingDraft]) -> tuple[str, str]:
    parts = (exc.field or "").split(".")
    if parts[0] == "findings" and len(parts) >= 3 and parts[1].isdigit():
        slot = drafts[int(parts[1])].slot if int(parts[1]) < len(drafts) else 0
        if parts[2] == "evidence":
            return f"finding_{slot}_photos", FIELD_MESSAGES["location"] \
                if parts[-1] == "geo" else FIELD_MESSAGES["evidence"]
        key = parts[2]
        return f"finding_{slot}_{key}", FIELD_MESSAGES.get(key, exc.reason)
    if parts[0] == "nodes":
        return "node", "所选节点无效"
    if parts[0] in FIELD_MESSAGES:
        return parts[0], FIELD_MESSAGES[parts[0]]
    return "_form", exc.reason


@router.post("/inspect")
async def inspect_submit(request: Request, viewer: CsrfViewerDep) -> Response:  # noqa: C901, PLR0912, PLR0915
    _inspector(viewer)
    ctx = ctx_of(request)
    form = await request.form()
    selected = list(dict.fromkeys(x for x in form.getlist("task") if isinstance(x, str)))[:20]
    v = _inspect_values(form)
    if not v.get("inspection_id"):  # left blank: a fresh one, as the form would have had
        v["inspection_id"] = _new_inspection_id()
    errors: dict[str, str] = {}

    def again(status: int, **kw: Any) -> Response:
        return _render_inspect(request, viewer, selected=selected, values=v, status_code=status,
                               **kw)

    visible_ids = [t for t in selected if can_see(ctx.engine, viewer, t)]
    specs = _specs(ctx, visible_ids)
    if not selected:
        errors["task"] = FIELD_MESSAGES["task"]
    elif len(specs) < len(selected):
        errors["task"] = "所选任务中有不存在或无权查看的任务"
    else:
        barred = [t for t, s in specs.items()
                  if not may(viewer.actor, s, c.RecordInspection)]
        if barred:
            errors["task"] = f"不能督查本单位的任务：{'、'.join(barred)}"
    if not v.get("place"):
        errors["place"] = "请填写检查地点"
    visited: dt.datetime | None = None
    try:
        visited = dt.datetime.fromisoformat(v.get("visited_at", ""))
        if visited.tzinfo is not None:
            visited = visited.replace(tzinfo=None)
    except ValueError:
        errors["visited_at"] = "请填写检查时间（年-月-日 时:分）"
    if v.get("outcome") not in OUTCOMES:
        errors["outcome"] = FIELD_MESSAGES["outcome"]
    geo = v.get("location", "").replace("，", ",").replace(" ", "")
    if geo and not GEO.match(geo):
        errors["location"] = FIELD_MESSAGES["location"]
    drafts: list[FindingDraft] = []
    photo_count = 0
    for slot in range(FINDING_SLOTS):
        desc = v.get(f"finding_{slot}_description", "")
        sev = v.get(f"finding_{slot}_severity", "")
        photos = form_files(form, f"finding_{slot}_photos")
        photo_count += len(photos)
        if not desc and not photos:
            continue
        if not desc:
            errors[f"finding_{slot}_description"] = "有照片时请描述发现的问题"
        if sev not in SEVERITIES:
            errors[f"finding_{slot}_severity"] = FIELD_MESSAGES["severity"]
        drafts.append(FindingDraft(slot, sev, desc, v.get(f"finding_{slot}_node", ""), photos))
    if photo_count > evidence.MAX_FILES:
        errors["_form"] = f"一次最多上传 {evidence.MAX_FILES} 张照片"
    if v.get("outcome") == "达标" and drafts:
        errors["outcome"] = "发现问题时结果不能是“达标”，请选“基本达标”或“不达标”"
    if errors:
        return again(400, errors=errors)
    assert visited is not None
    payloads = {t: _inspect_payload(specs[t], v, drafts, visited, viewer.actor)
                for t in selected}
    for payload in payloads.values():
        try:
            prepare("inspect", payload)
        except CommandRefused as exc:
            name, message = _inspect_errors(exc, drafts)
            return again(400, errors={name: message})
    # Valid: now the photos are stored (once, for every task of the visit) and sent.
    try:
        for d in drafts:
            items = store_files(ctx, d.photos, selected, geo or None)
            for payload in payloads.values():
                payload["findings"][drafts.index(d)]["evidence"] = items
    except evidence.EvidenceTooLarge as exc:
        return again(400, errors={"_form": str(exc)})
    results = []
    for task_id, payload in payloads.items():
        results.append(await _send_inspection(ctx, task_id, payload))
    if len(results) == 1:
        r = results[0]
        if r["ok"]:
            return RedirectResponse(r["url"], status_code=303)
        return again(409 if r["sent"] else 503,
                     refusal={"code": r["code"], "reason": r["reason"]})
    return render(request, "inspect_result.html", results=results,
                  status_code=200 if all(r["ok"] for r in results) else 409)


async def _send_inspection(ctx: WebContext, task_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"task_id": task_id, "task_url": task_url(task_id), "ok": False,
                              "sent": False, "code": "", "reason": "", "url": ""}
    with ctx.engine.connect() as conn:
        already = conn.execute(select(InspectionRow.task_id).where(
            InspectionRow.task_id == task_id,
            InspectionRow.inspection_id == payload["inspection_id"])).first()
    if already is not None:  # a resubmitted form: the visit is on the record once
        result.update(ok=True, already=True, reason="此次督查此前已记录，未重复提交",
                      url=f"{task_url(task_id)}?done=already#answer")
        return result
    try:
        answer = await send_command(await ctx.client(), task_id, "inspect", payload,
                                    now=ctx.clock(),
                                    signer=ctx.signer)
    except CommandRefused as exc:
        result.update(sent=exc.sent, code=REFUSAL_CODES.get(exc.code, exc.code),
                      reason=exc.reason)
        return result
    except Exception as exc:  # noqa: BLE001
        result.update(code=REFUSAL_CODES["unavailable"], reason=str(exc))
        return result
    seqs = [int(e["seq"]) for e in answer.get("events", []) if "seq" in e]
    if seqs:
        await wait_recorded(ctx, task_id, max(seqs))
    result.update(ok=True, sent=True, url=done_url(task_id, "inspect", answer),
                  events=len(seqs))
    return result


# --- a round uploaded as a sheet -----------------------------------------------------------------

SHEET_COLUMNS = ("任务ID", "检查编号", "督查人", "检查时间", "地点", "检查节点", "结果", "问题编号",
                 "严重程度", "问题描述", "问题节点", "证据SHA256", "定位")
VERDICTS = {"accepted": ("已记录", "ok"), "rejected": ("被拒绝", "bad"),
            "already recorded": ("此前已记录", "wait")}


def _render_upload(request: Request, *, errors: dict[str, str] | None = None,
                   verdicts: list[dict[str, Any]] | None = None, filename: str = "",
                   status_code: int = 200) -> Response:
    counts: dict[str, int] = {}
    for x in verdicts or []:
        counts[x["label"]] = counts.get(x["label"], 0) + 1
    return render(request, "upload.html", status_code=status_code, errors=errors or {},
                  verdicts=verdicts, filename=filename, counts=counts,
                  columns=SHEET_COLUMNS)


@router.get("/inspections/upload")
async def upload_page(request: Request, viewer: ViewerDep) -> Response:
    _inspector(viewer)
    return _render_upload(request)


@router.get("/inspections/template.csv")
async def upload_template(viewer: ViewerDep) -> Response:
    _inspector(viewer)
    out = io.StringIO()
    csv.writer(out).writerow(SHEET_COLUMNS)
    return Response(("\ufeff" + out.getvalue()).encode("utf-8"), media_type="text/csv",
                    headers={"Content-Disposition": "attachment; filename=inspection-round.csv"})


def _own_rows(rows: list[tuple[int, dict[str, str]]], viewer: Viewer,
              visible_tasks: set[str]) -> tuple[list[tuple[int, dict[str, str]]],
                                                list[dict[str, Any]]]:
    """The rows the viewer may send: the inspector is the signed-in supervisor (a blank 督查人
    is taken as them); an inspection naming another inspector, or a task the viewer cannot
    see, is refused whole here and nothing of it is sent."""
    barred: dict[tuple[str, str], str] = {}
    for number, r in rows:
        key = (r.get("task_id", ""), r.get("inspection_id", ""))
        actor = r.get("actor", "")
        if actor and actor != viewer.actor:
            barred.setdefault(key, f"第 {number} 行督查人为 {actor}，只能导入本人（{viewer.actor}）"
                                   f"的督查记录")
        elif key[0] and key[0] not in visible_tasks:
            barred.setdefault(key, f"没有任务 {key[0]}，或您无权查看")
    kept, refused = [], []
    for number, r in rows:
        key = (r.get("task_id", ""), r.get("inspection_id", ""))
        if key in barred:
            refused.append({"row": number, "task_id": key[0], "inspection_id": key[1],
                            "verdict": "rejected", "reason": barred[key] + "；本次督查未提交"})
        else:
            kept.append((number, {**r, "actor": viewer.actor}))
    return kept, refused


def _write_rows(path: Path, rows: list[tuple[int, dict[str, str]]]) -> None:
    """A CSV the importer reads with the sheet's own row numbers (blank lines keep the places
    of rows left out)."""
    fields = sorted({k for _n, r in rows for k in r})
    by_number = dict(rows)
    last = max(by_number, default=1)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for number in range(2, last + 1):
            r = by_number.get(number)
            w.writerow([r.get(k, "") for k in fields] if r else [""] * len(fields))


@router.post("/inspections/upload")
async def upload_submit(request: Request, viewer: CsrfViewerDep) -> Response:
    from service.inspection_import import import_inspections, read_rows

    _inspector(viewer)
    ctx = ctx_of(request)
    form = await request.form()
    sheets = form_files(form, "sheet")
    if not sheets:
        return _render_upload(request, errors={"sheet": "请选择督查结果表（.xlsx 或 .csv）"},
                              status_code=400)
    sheet = sheets[0]
    name = evidence._safe_name(sheet.filename or "")
    suffix = Path(name).suffix.lower()
    if suffix not in (".xlsx", ".csv"):
        return _render_upload(request, errors={"sheet": "只接受 .xlsx 或 .csv 文件"},
                              filename=name, status_code=400)
    data = await sheet.read(MAX_SHEET_BYTES + 1)
    if len(data) > MAX_SHEET_BYTES:
        return _render_upload(request, errors={"sheet": "文件超过 5 MB，请分批导入"},
                              filename=name, status_code=400)
    with tempfile.TemporaryDirectory(prefix="duban-round-") as tmp:
        original = Path(tmp) / f"round{suffix}"
        original.write_bytes(data)
        try:
            rows = read_rows(original)
        except (ValueError, OSError, KeyError) as exc:
            return _render_upload(request, errors={"sheet": f"无法读取：{exc}"}, filename=name,
                                  status_code=400)
        except Exception:  # noqa: BLE001 - a corrupt .xlsx raises whatever openpyxl raises
            return _render_upload(request, errors={"sheet": "无法读取：文件已损坏或不是表格"},
                                  filename=name, status_code=400)
        task_ids = sorted({r.get("task_id", "") for _n, r in rows} - {""})
        seen = {t for t in task_ids if can_see(ctx.engine, viewer, t)}
        kept, refused = _own_rows(rows, viewer, seen)
        verdicts: list[dict[str, Any]] = list(refused)
        if kept:
            cleaned = Path(tmp) / "own.csv"
            _write_rows(cleaned, kept)
            try:
                client = await ctx.client()
            except Exception as exc:  # noqa: BLE001
                return _render_upload(request, errors={"sheet": f"督办引擎暂不可用：{exc}"},
                                      filename=name, status_code=503)
            try:
                # Signed like every other command; `as_actor` repeats the own-rows rule above
                # where the importer decides, so no row can speak for another inspector.
                answered = await import_inspections(client, cleaned, signer=ctx.signer,
                                                    as_actor=viewer.actor, now=ctx.clock())
            except (ValueError, OSError) as exc:
                return _render_upload(request, errors={"sheet": f"无法导入：{exc}"},
                                      filename=name, status_code=400)
            verdicts += [dict(x.__dict__) for x in answered]
    for x in verdicts:
        x["label"], x["cls"] = VERDICTS.get(x["verdict"], (x["verdict"], ""))
        x["url"] = task_url(x["task_id"]) if x["task_id"] in seen else ""
    verdicts.sort(key=lambda x: x["row"])
    return _render_upload(request, verdicts=verdicts, filename=name)
