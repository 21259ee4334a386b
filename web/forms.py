"""办理表单: every command a person sends from the browser, and the evidence they upload.

Each form is read, checked and sent the same way:
- the actor is the signed-in viewer (never a form field), and a read-only viewer (审计) is
  refused with 403 before anything is read or sent; so is a form the plan's roster does not
  give the viewer (`domain.authz`), and a task it may not see answers 404;
- the fields are turned into the command's payload and checked by `service.commands.prepare`
  (the task's own parse): a bad field is shown beside its input, in Chinese, and nothing is
  sent, nothing is stored (evidence files are stored only once the rest is valid);
- the command goes through `service.commands.send_command`, signed by the app's key for the
  viewer; the workflow decides. Its refusal is shown on the form (and is on the task's record);
  its acceptance redirects (303) to the task page, which lists the events it recorded.

The supervisor's 四不两直 form (`/inspect`) is built for a phone: one column, large targets,
the camera for photos. A whole round can also be uploaded as a sheet (`/inspections/upload`,
`service.inspection_import`), each row answered with its verdict.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
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
from web.task_pages import (
    REFUSAL_CODES,
    allowed_forms,
    load_task,
    may,
    render_task,
)
from web.templating import render

router = APIRouter()

READ_ONLY = "您的角色（审计/纪委）只能查阅，不能办理任何事项"
NOT_YOURS = "按本计划的名册，您不能办理此项"
INSPECT_ONLY = "只有督查组可以填写现场督查"
STORE_WAIT_SECONDS = 5.0  # how long a redirect waits for the record to catch up with the answer
FINDING_SLOTS = 3
MAX_SHEET_BYTES = 5 * 1024 * 1024

# Chinese messages for the payload fields a form maps to its inputs (the task's own parse
# names the field; the words are ours).
FIELD_MESSAGES: dict[str, str] = {
    "percent": "进度须为 0 到 100 之间的整数",
    "note": "内容过长（最多 4000 字）",
    "reason": "请写明理由（最多 4000 字）",
    "node": "请选择节点",
    "proposed_due": "请选择申请延至的日期",
    "granted_due": "日期无效",
    "approve": "请选择审批结论",
    "finding_id": "请选择问题",
    "passed": "请选择核查结论",
    "place": "请填写检查地点（最多 500 字）",
    "visited_at": "请填写检查时间",
    "outcome": "请选择检查结果",
    "inspection_id": "检查编号只能由字母、数字、- 和 _ 组成",
    "severity": "请选择严重程度",
    "description": "请描述发现的问题（最多 4000 字）",
    "evidence": "佐证文件无效",
    "location": "定位格式应为“纬度,经度”，例如 26.2634,117.6389",
    "task": "请至少选择一个任务",
}
OUTCOMES = ("达标", "基本达标", "不达标")
SEVERITIES = ("一般", "较重", "严重")
GEO = re.compile(r"^-?\d{1,3}(\.\d+)?,-?\d{1,3}(\.\d+)?$")


def _refuse(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _commanding(viewer: Viewer) -> None:
    if viewer.read_only:
        raise _refuse(403, READ_ONLY)


def _strings(form: FormData) -> dict[str, str]:
    return {k: v.strip() for k, v in form.multi_items() if isinstance(v, str) and k != "csrf"}


def _files(form: FormData, name: str) -> list[UploadFile]:
    return [v for v in form.getlist(name) if isinstance(v, UploadFile) and v.filename]


def _refusal(exc: CommandRefused) -> dict[str, str]:
    return {"code": REFUSAL_CODES.get(exc.code, exc.code), "reason": exc.reason}


# Refusals by the update's validator, which leave no record on the task.
UNRECORDED = frozenset({"malformed", "too_large", "unknown_command"})


async def _wait_recorded(ctx: WebContext, task_id: str, seq: int) -> None:
    """Until the store holds event `seq` of the task (the workflow records right after it
    answers), at most STORE_WAIT_SECONDS: the page redirected to then shows what was done."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORE_WAIT_SECONDS
    while ctx.store.head(task_id).seq < seq and loop.time() < deadline:
        await asyncio.sleep(0.05)


def _done_url(task_id: str, form: str, answer: dict[str, Any]) -> str:
    seqs = [int(e["seq"]) for e in answer.get("events", []) if "seq" in e]
    query = {"done": form}
    if seqs:
        query["seq"] = f"{min(seqs)}-{max(seqs)}"
    return f"{task_url(task_id)}?{urlencode(query)}#answer"


# --- the task page's forms ---------------------------------------------------------------------


@dataclass
class Parsed:
    """A form read into a command: its name, payload (without actor and evidence), the errors
    found before the task's parse, and how the payload's fields map back to inputs."""

    command: str
    payload: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # payload field -> input name
    has_evidence: bool = False


def _required(v: dict[str, str], name: str, errors: dict[str, str], message: str) -> str:
    value = v.get(name, "")
    if not value:
        errors[name] = message
    return value


def _yes_no(v: dict[str, str], name: str, errors: dict[str, str]) -> bool | None:
    value = v.get(name, "")
    if value not in ("yes", "no"):
        errors[name] = FIELD_MESSAGES[name]
        return None
    return value == "yes"


def _parse_acknowledge(v: dict[str, str]) -> Parsed:
    return Parsed("acknowledge", {"note": v.get("note", "")})


def _parse_progress(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    text = v.get("percent", "")
    percent: int | None = None
    if not text:
        errors["percent"] = "请填写当前进度（0 到 100 的整数）"
    elif not re.fullmatch(r"[+-]?\d{1,6}", text):
        errors["percent"] = FIELD_MESSAGES["percent"]
    else:
        percent = int(text)
    return Parsed("progress", {"percent": percent, "note": v.get("note", "")}, errors)


def _parse_claim(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    node = _required(v, "node", errors, FIELD_MESSAGES["node"])
    return Parsed("claim", {"node": node, "note": v.get("note", "")}, errors, has_evidence=True)


def _parse_request_extension(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    node = _required(v, "node", errors, FIELD_MESSAGES["node"])
    due = _required(v, "proposed_due", errors, FIELD_MESSAGES["proposed_due"])
    reason = _required(v, "reason", errors, "请写明延期理由")
    return Parsed("request_extension", {"node": node, "proposed_due": due or None,
                                        "reason": reason}, errors)


def _parse_report_rectification(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    fid = _required(v, "finding_id", errors, FIELD_MESSAGES["finding_id"])
    return Parsed("report_rectification", {"finding_id": fid, "note": v.get("note", "")},
                  errors, has_evidence=True)


def _parse_acceptance(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    node = _required(v, "node", errors, FIELD_MESSAGES["node"])
    decision = v.get("decision", "")
    note = v.get("note", "")
    if decision == "reject":
        if not note:
            errors["note"] = "不通过时请写明理由"
        return Parsed("reject_claim", {"node": node, "reason": note}, errors,
                      {"reason": "note"})
    if decision != "accept":
        errors["decision"] = "请选择验收结论"
    return Parsed("accept", {"node": node, "note": note}, errors)


def _parse_decide_extension(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    node = _required(v, "node", errors, FIELD_MESSAGES["node"])
    approve = _yes_no(v, "approve", errors)
    granted = v.get("granted_due", "") or None
    if granted and approve is False:
        errors["granted_due"] = "不批准时不填日期"
    return Parsed("decide_extension", {"node": node, "approve": approve, "granted_due": granted,
                                       "reason": v.get("reason", "")}, errors)


def _parse_verify_rectification(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    fid = _required(v, "finding_id", errors, FIELD_MESSAGES["finding_id"])
    passed = _yes_no(v, "passed", errors)
    return Parsed("verify_rectification", {"finding_id": fid, "passed": passed,
                                           "note": v.get("note", "")}, errors)


PARSERS: dict[str, Callable[[dict[str, str]], Parsed]] = {
    "acknowledge": _parse_acknowledge,
    "progress": _parse_progress,
    "claim": _parse_claim,
    "request_extension": _parse_request_extension,
    "report_rectification": _parse_report_rectification,
    "acceptance": _parse_acceptance,
    "decide_extension": _parse_decide_extension,
    "verify_rectification": _parse_verify_rectification,
}


def _field_error(exc: CommandRefused, inputs: dict[str, str]) -> tuple[str, str]:
    """(input name, Chinese message) for the task's refusal of a payload field; a refusal
    naming no field a form has is shown at the top of the form."""
    head = (exc.field or "").split(".")[0]
    message = FIELD_MESSAGES.get(head)
    if not head or message is None:
        return "_form", exc.reason
    return inputs.get(head, head), message


def _check(command: str, payload: dict[str, Any], inputs: dict[str, str]) -> dict[str, str]:
    """The task's own parse of the payload, its refusal mapped to an input (nothing sent)."""
    try:
        prepare(command, payload)
    except CommandRefused as exc:
        name, message = _field_error(exc, inputs)
        return {name: message}
    return {}


def _store_files(ctx: WebContext, uploads: list[UploadFile], task_ids: list[str],
                 geo: str | None = None) -> list[dict[str, str]]:
    items = []
    for up in uploads:
        stored = evidence.store(ctx.evidence_dir, up.file, name=up.filename or "file",
                                content_type=up.content_type, task_ids=task_ids)
        item = {"sha256": stored.sha256, "name": stored.name}
        if geo:
            item["geo"] = geo
        items.append(item)
    return items


@router.post("/tasks/{task_id:path}/commands/{form_name}")
async def task_form(request: Request, viewer: CsrfViewerDep, task_id: str,
                    form_name: str) -> Response:
    _commanding(viewer)
    ctx = ctx_of(request)
    parse = PARSERS.get(form_name)
    if parse is None:
        raise _refuse(404, "没有这项办理")
    record = load_task(ctx, viewer, task_id)
    if form_name not in allowed_forms(viewer, record.spec):
        raise _refuse(403, NOT_YOURS)
    form = await request.form()
    values = _strings(form)
    parsed = parse(values)
    payload = {**parsed.payload, "actor": viewer.actor}
    uploads = _files(form, "evidence") if parsed.has_evidence else []
    errors = dict(parsed.errors)
    if len(uploads) > evidence.MAX_FILES:
        errors["evidence"] = f"一次最多上传 {evidence.MAX_FILES} 个文件"
    if not errors:
        errors = _check(parsed.command, payload, parsed.inputs)

    def again(status: int, **kw: Any) -> Response:
        return render_task(request, viewer, record, status_code=status, form=form_name,
                           values=values, **kw)

    if errors:
        return again(400, errors=errors)
    if uploads:
        try:
            payload["evidence"] = _store_files(ctx, uploads, [task_id])
        except evidence.EvidenceTooLarge as exc:
            return again(400, errors={"evidence": str(exc)})
        errors = _check(parsed.command, payload, parsed.inputs)
        if errors:
            return again(400, errors=errors)
    before = ctx.store.head(task_id).seq
    try:
        answer = await send_command(await ctx.client(), task_id, parsed.command, payload,
                                    now=ctx.clock(),
                                    signer=ctx.signer)
    except CommandRefused as exc:
        if not exc.sent and exc.field:
            name, message = _field_error(exc, parsed.inputs)
            return again(400, errors={name: message})
        if exc.sent and exc.code not in UNRECORDED:
            await _wait_recorded(ctx, task_id, before + 1)  # the refusal, on the timeline
            record = load_task(ctx, viewer, task_id)
        return again(409 if exc.sent else 503, refusal=_refusal(exc))
    except Exception as exc:  # noqa: BLE001 - no engine: the page says so, nothing was sent
        return again(503, refusal={"code": REFUSAL_CODES["unavailable"], "reason": str(exc)})
    seqs = [int(e["seq"]) for e in answer.get("events", []) if "seq" in e]
    if seqs:
        await _wait_recorded(ctx, task_id, max(seqs))
    return RedirectResponse(_done_url(task_id, form_name, answer), status_code=303)


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
    _commanding(viewer)
    if not viewer.is_supervisor:
        raise _refuse(403, INSPECT_ONLY)


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
        photos = _files(form, f"finding_{slot}_photos")
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
            items = _store_files(ctx, d.photos, selected, geo or None)
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
        await _wait_recorded(ctx, task_id, max(seqs))
    result.update(ok=True, sent=True, url=_done_url(task_id, "inspect", answer),
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
    sheets = _files(form, "sheet")
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


# --- evidence download -------------------------------------------------------------------------

INLINE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"}


@router.get("/evidence/{sha256}")
async def evidence_file(request: Request, viewer: ViewerDep, sha256: str) -> Response:
    """A stored file, to a viewer who can see a task whose record references it (else 404)."""
    ctx = ctx_of(request)
    sha = sha256.lower()
    path = evidence.path_of(ctx.evidence_dir, sha)
    if path is None:
        raise _refuse(404, "没有这份佐证材料，或您无权查看")
    for task_id in evidence.candidate_tasks(ctx.evidence_dir, sha):
        if not can_see(ctx.engine, viewer, task_id):
            continue
        if any(evidence.references(s.event, sha) for s in ctx.store.load(task_id)):
            meta = evidence.read_meta(ctx.evidence_dir, sha)
            kind = str(meta.get("content_type") or "application/octet-stream")
            inline = kind in INLINE_TYPES
            return FileResponse(
                path, media_type=kind if inline else "application/octet-stream",
                filename=str(meta.get("name") or sha),
                content_disposition_type="inline" if inline else "attachment",
                headers={"X-Content-Type-Options": "nosniff",
                         "Content-Security-Policy": "default-src 'none'; sandbox",
                         "Cache-Control": "private, max-age=3600"})
    raise _refuse(404, "没有这份佐证材料，或您无权查看")

