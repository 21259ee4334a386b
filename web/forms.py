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
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from service.commands import CommandRefused, prepare, send_command
from web import evidence
from web.auth import CsrfViewerDep, ctx_of
from web.form_fields import (
    FIELD_MESSAGES,
    commanding,
    done_url,
    form_files,
    refuse,
    store_files,
    wait_recorded,
)
from web.task_pages import REFUSAL_CODES, allowed_forms, load_task, render_task

router = APIRouter()

NOT_YOURS = "按本计划的名册，您不能办理此项"


def _strings(form: FormData) -> dict[str, str]:
    return {k: v.strip() for k, v in form.multi_items() if isinstance(v, str) and k != "csrf"}


def _refusal(exc: CommandRefused) -> dict[str, str]:
    return {"code": REFUSAL_CODES.get(exc.code, exc.code), "reason": exc.reason}


# Refusals by the update's validator, which leave no record on the task.
UNRECORDED = frozenset({"malformed", "too_large", "unknown_command"})


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


def _parse_sign_notice(v: dict[str, str]) -> Parsed:
    errors: dict[str, str] = {}
    key = _required(v, "step_key", errors, FIELD_MESSAGES["step_key"])
    return Parsed("sign_notice", {"step_key": key, "note": v.get("note", "")}, errors)


PARSERS: dict[str, Callable[[dict[str, str]], Parsed]] = {
    "acknowledge": _parse_acknowledge,
    "progress": _parse_progress,
    "claim": _parse_claim,
    "request_extension": _parse_request_extension,
    "report_rectification": _parse_report_rectification,
    "acceptance": _parse_acceptance,
    "decide_extension": _parse_decide_extension,
    "verify_rectification": _parse_verify_rectification,
    "sign_notice": _parse_sign_notice,
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


@router.post("/tasks/{task_id:path}/commands/{form_name}")
async def task_form(request: Request, viewer: CsrfViewerDep, task_id: str,
                    form_name: str) -> Response:
    commanding(viewer)
    ctx = ctx_of(request)
    parse = PARSERS.get(form_name)
    if parse is None:
        raise refuse(404, "没有这项办理")
    record = load_task(ctx, viewer, task_id)
    if form_name not in allowed_forms(viewer, record.spec):
        raise refuse(403, NOT_YOURS)
    form = await request.form()
    values = _strings(form)
    parsed = parse(values)
    payload = {**parsed.payload, "actor": viewer.actor}
    uploads = form_files(form, "evidence") if parsed.has_evidence else []
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
            payload["evidence"] = store_files(ctx, uploads, [task_id])
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
            await wait_recorded(ctx, task_id, before + 1)  # the refusal, on the timeline
            record = load_task(ctx, viewer, task_id)
        return again(409 if exc.sent else 503, refusal=_refusal(exc))
    except Exception as exc:  # noqa: BLE001 - no engine: the page says so, nothing was sent
        return again(503, refusal={"code": REFUSAL_CODES["unavailable"], "reason": str(exc)})
    seqs = [int(e["seq"]) for e in answer.get("events", []) if "seq" in e]
    if seqs:
        await wait_recorded(ctx, task_id, max(seqs))
    return RedirectResponse(done_url(task_id, form_name, answer), status_code=303)
