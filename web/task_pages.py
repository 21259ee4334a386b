"""任务详情页: one task (task × responsible unit) as its record tells it.

Everything here is read from the store — the task's events (by task id, an index lookup), the
督办单 documents — and folded with the workflow's own `evolve`, never asked of Temporal: the
page keeps working while the engine is away, and what it shows is what an auditor would find.
With `?as_of=YYYY-MM-DD` the whole page (state, nodes, timeline, verdicts) is the record as it
stood at the end of that local day; the forms are shown only on the present record.

A task the viewer may not see answers 404 exactly like a task that does not exist.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from activities.notice_document import number_text
from audit.rules_check import RulesReport, check_rules
from audit.timeline import AuditInputError, events_as_of, fmt_local, parse_as_of
from domain import commands as c
from domain import events as ev
from domain.authz import authorise
from domain.calendar import local_text
from domain.evolve import evolve
from domain.plan import TaskSpec
from domain.state import NoticeState, TaskState
from web.access import can_see, task_url
from web.auth import Viewer, ViewerDep, ctx_of
from web.context import WebContext
from web.templating import duration, render

router = APIRouter()

NOT_FOUND = "没有这个任务，或您无权查看"

EVENT_LABELS = {
    "TaskAssigned": "任务下达", "Acknowledged": "签收", "ProgressReported": "进度反馈",
    "NodeClaimed": "申请销号", "ClaimRejected": "验收不通过", "NodeAccepted": "验收通过",
    "ExtensionRequested": "申请延期", "ExtensionDecided": "延期审批",
    "InspectionRecorded": "四不两直督查", "RectificationOrdered": "整改通知",
    "RectificationReported": "整改反馈", "RectificationVerified": "整改核查",
    "FalseReportFound": "发现虚报", "NodeReopened": "节点重开", "EscalationFired": "逐级督办",
    "LightChanged": "亮灯变化", "TaskCompleted": "任务完成", "RecheckScheduled": "抽中回头看",
    "RecheckRecorded": "回头看", "TaskClosed": "销号", "CommandRejected": "指令被拒",
    "CalendarUpdated": "工作日历更新",
    "NoticeSignedFor": "签收督办", "NoticeReplyMissed": "逾期未反馈",
}
NODE_STATUS = {"open": "推进中", "claimed": "待验收", "done": "已完成"}
FINDING_STATUS = {"open": "待整改", "reported": "待核查", "closed": "已销号"}
LIGHT_WORDS = {"green": "绿灯", "yellow": "黄灯", "red": "红灯"}
TARGET_KIND = {"node": "节点", "finding": "整改问题", "false_report": "虚报"}
RUNG_VERDICTS = {
    "on time": ("按时", "ok"), "late": ("迟发", "bad"), "missing": ("缺失", "bad"),
    "pending": ("宽限期内", "wait"), "not due": ("未到期", "wait"),
    "not required": ("无需触发", "muted"), "unexpected": ("不应触发", "bad"),
    "early": ("提前", "bad"),
}
REFUSAL_CODES = {
    "malformed": "内容不符合要求", "unknown_command": "未知指令", "unauthorised": "无权操作",
    "unauthenticated": "身份未经核验", "not_allowed": "当前状态不允许", "too_late": "已过时限",
    "unknown_node": "无此节点", "unknown_finding": "无此问题", "closed": "任务已销号",
    "duplicate": "重复提交", "too_large": "内容过大", "unavailable": "督办引擎暂不可用",
    "refused": "被拒绝",
}
# The forms of the task page: name -> (Chinese title, the command classes it may send).
FORMS: dict[str, tuple[str, tuple[type[c.Command], ...]]] = {
    "acknowledge": ("签收", (c.Acknowledge,)),
    "progress": ("进度反馈", (c.ReportProgress,)),
    "claim": ("申请销号", (c.ClaimNode,)),
    "request_extension": ("申请延期", (c.RequestExtension,)),
    "report_rectification": ("整改反馈", (c.ReportRectification,)),
    "acceptance": ("验收", (c.AcceptNode, c.RejectClaim)),
    "decide_extension": ("延期审批", (c.DecideExtension,)),
    "verify_rectification": ("整改核查", (c.VerifyRectification,)),
    "inspect": ("四不两直督查", (c.RecordInspection,)),
    "sign_notice": ("签收督办", (c.SignNotice,)),
}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# --- loading -----------------------------------------------------------------------------------


@dataclass
class TaskRecord:
    task_id: str
    events: list[ev.Event]
    spec: TaskSpec

    @property
    def names(self) -> dict[str, str]:
        return {m.actor: m.name for m in self.spec.roster}


def load_task(ctx: WebContext, viewer: Viewer, task_id: str) -> TaskRecord:
    """The task's record, or 404 (missing and invisible answer alike)."""
    if not task_id or len(task_id) > 200 or not can_see(ctx.engine, viewer, task_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    stored = ctx.store.load(task_id)
    if not stored:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    events = [ev.parse_event(s.event) for s in stored]
    first = events[0]
    if not isinstance(first, ev.TaskAssigned):  # a record an auditor must look at; not a page
        raise HTTPException(status_code=500, detail="任务记录的第一条不是任务下达，请联系督查办核查")
    return TaskRecord(task_id, events, first.spec)


def allowed_forms(viewer: Viewer, spec: TaskSpec) -> set[str]:
    """The forms whose commands the plan's roster lets this viewer send (domain.authz)."""
    if viewer.read_only:
        return set()
    return {name for name, (_title, classes) in FORMS.items()
            if any(may(viewer.actor, spec, cls) for cls in classes)}


def may(actor: str, spec: TaskSpec, cls: type[c.Command]) -> bool:
    """Whether the roster lets `actor` send commands of this kind to the task (the rule does
    not look at the command's fields, so an empty one stands in for them)."""
    probe: dict[str, Any] = {"actor": actor}
    return authorise(spec, cls.model_construct(**probe)) is None


# --- words -------------------------------------------------------------------------------------


@dataclass
class Words:
    spec: TaskSpec
    names: dict[str, str]

    def t(self, moment: dt.datetime | None) -> str:
        return local_text(moment, self.spec.timezone)

    def who(self, actor: str | None) -> str:
        if actor is None:
            return "—"
        if actor == ev.SYSTEM:
            return "系统"
        name = self.names.get(actor)
        return f"{name}（{actor}）" if name else actor

    def target(self, kind: str, ident: str) -> str:
        if kind == "finding":
            return f"整改问题 {ident}"
        if kind == "false_report":
            return f"节点 {ident} 虚报"
        return f"节点 {ident}"


def describe(e: ev.Event, w: Words) -> str:  # noqa: C901, PLR0911, PLR0912 - one line per type
    """One short Chinese sentence: what this event did."""
    t = w.t
    match e:
        case ev.TaskAssigned():
            nodes = "；".join(f"{n.code} {n.title} {t(n.due)} 前" for n in e.spec.nodes)
            return (f"下达给 {e.spec.unit.name}，牵头单位 {e.spec.lead_unit.name}；节点：{nodes}")
        case ev.Acknowledged():
            return "已签收" + (f"：{e.note}" if e.note else "")
        case ev.ProgressReported():
            text = f"进度 {e.percent}%"
            if e.meets_report_node:
                text += f"，满足报送节点 {e.meets_report_node}"
            return text + (f"：{e.note}" if e.note else "")
        case ev.NodeClaimed():
            files = f"，佐证 {len(e.evidence)} 件" if e.evidence else ""
            return f"节点 {e.node} 申请销号{files}" + (f"：{e.note}" if e.note else "")
        case ev.ClaimRejected():
            return f"节点 {e.node} 验收不通过：{e.reason}"
        case ev.NodeAccepted():
            via = f"经督查 {e.inspection_id}" if e.via == "inspection" else "经验收"
            return (f"节点 {e.node} {via}通过（申请于 {t(e.claimed_at)}，"
                    f"{'按时' if e.on_time else '逾期'}）")
        case ev.ExtensionRequested():
            return (f"节点 {e.node} 申请延期：{t(e.current_due)} → {t(e.proposed_due)}"
                    f"（理由：{e.reason}）")
        case ev.ExtensionDecided():
            if e.approved:
                return (f"节点 {e.node} 延期获批：{t(e.previous_due)} → {t(e.granted_due)}"
                        f"（原定 {t(e.original_due)}）")
            return f"节点 {e.node} 延期未获批准" + (f"：{e.reason}" if e.reason else "")
        case ev.InspectionRecorded():
            kind = "回头看督查" if e.recheck else "四不两直督查"
            nodes = f"，检查节点 {'、'.join(e.nodes)}" if e.nodes else ""
            return (f"{kind} {e.inspection_id}：{e.place}，{w.who(e.inspector)} 于 "
                    f"{t(e.visited_at)} 检查{nodes}；结果 {e.outcome}，问题 {len(e.findings)} 个")
        case ev.RectificationOrdered():
            return f"问题 {e.finding_id}（{e.severity}）限 {t(e.deadline)} 前整改"
        case ev.RectificationReported():
            files = f"，佐证 {len(e.evidence)} 件" if e.evidence else ""
            return f"问题 {e.finding_id} 报告已整改{files}" + (f"：{e.note}" if e.note else "")
        case ev.RectificationVerified():
            if e.passed:
                return f"问题 {e.finding_id} 整改核查通过，销号"
            return f"问题 {e.finding_id} 整改核查未通过，退回" + (f"：{e.note}" if e.note else "")
        case ev.FalseReportFound():
            return (f"虚报：节点 {e.node} 已申请销号（{t(e.claimed_at)}），"
                    f"督查 {e.inspection_id} 发现未完成")
        case ev.NodeReopened():
            return f"节点 {e.node} 重开（{e.reason}），新期限 {t(e.new_due)}"
        case ev.EscalationFired():
            verb = "下发" if e.action == "notice" else "发出"
            reply = f"，限 {t(e.reply_by)} 前反馈" if e.reply_by else ""
            return (f"{w.target(e.target_kind, e.target)}：{verb}{e.title}（第 {e.level} 级）"
                    f"——{e.demand}{reply}")
        case ev.LightChanged():
            why = f"（{'；'.join(e.reasons)}）" if e.reasons else ""
            return f"{LIGHT_WORDS.get(e.previous, e.previous)} → {LIGHT_WORDS.get(e.light, e.light)}{why}"
        case ev.TaskCompleted():
            return "任务完成，" + ("全部按时" if e.on_time else "有节点逾期")
        case ev.RecheckScheduled():
            return f"抽中回头看（抽签 {e.draw}）：{t(e.due_at)} 起，{t(e.until)} 前复查"
        case ev.RecheckRecorded():
            result = "通过" if e.passed else "未通过" + (
                f"，节点 {'、'.join(e.nodes)} 未完成" if e.nodes else "")
            return f"回头看：{w.who(e.inspector)} 于 {t(e.visited_at)} 复查，{result}"
        case ev.TaskClosed():
            return f"任务销号：{e.reason}"
        case ev.CommandRejected():
            return (f"指令 {e.command} 被拒（{REFUSAL_CODES.get(e.code, e.code)}）：{e.reason}")
        case ev.CalendarUpdated():
            return "启用新的工作日历" + (f"：{e.note}" if e.note else "")
        case ev.NoticeSignedFor():
            return f"签收督办 {e.step_key}" + (f"：{e.note}" if e.note else "")
        case ev.NoticeReplyMissed():
            return (f"督办 {e.step_key}（{t(e.issued_at)} 下发）至反馈时限 {t(e.reply_by)} "
                    f"仍未签收、未反馈")
    return type(e).__name__


def _reply_state(notice: NoticeState | None, w: Any) -> tuple[str, str]:
    """签收/反馈 of a notice in words, and its style: signed for, answered, missed, awaited."""
    if notice is None:
        return "—", ""
    if notice.signed_at is not None:
        return f"{w.who(notice.signed_by or '')} 于 {w.t(notice.signed_at)} 签收", "ok"
    if notice.answered_at is not None:
        return f"已于 {w.t(notice.answered_at)} 反馈", "ok"
    if notice.missed_at is not None:
        return "逾期未签收、未反馈", "bad"
    return ("待签收" if notice.reply_by is not None else "—"), ""


def proof_text(e: ev.Event) -> str:
    proof = getattr(e, "proof", None)
    if proof is None:
        return ""
    if proof.method == "signed":
        return f"签名核验：{proof.sender or '—'}（密钥 {str(proof.key or '')[:16]}…）"
    return "未签名（自称身份，仅限演示环境）"


# --- the page's content ------------------------------------------------------------------------


@dataclass
class AsOf:
    text: str = ""
    moment: dt.datetime | None = None
    error: str | None = None


def parse_as_of_param(value: str | None, spec: TaskSpec, first_at: dt.datetime) -> AsOf:
    text = (value or "").strip()
    if not text:
        return AsOf()
    if not DATE.match(text):
        return AsOf(text, None, "请按 年-月-日 选择日期，例如 2026-03-31")
    try:
        moment = parse_as_of(text, spec.timezone)
    except AuditInputError:
        return AsOf(text, None, "没有这一天，请重新选择日期")
    assert moment is not None
    if moment < first_at:
        return AsOf(text, None, f"该日任务尚未下达（下达于 {fmt_local(first_at, spec.timezone)}）")
    return AsOf(text, moment)


def _evidence_rows(items: tuple[ev.Evidence, ...]) -> list[dict[str, str]]:
    return [{"sha256": x.sha256, "name": x.name or "佐证", "geo": x.geo or ""} for x in items]


@dataclass
class PageData:
    record: TaskRecord
    state: TaskState
    chosen: list[ev.Event]
    as_of: AsOf
    w: Words
    sections: dict[str, Any] = field(default_factory=dict)


def build(ctx: WebContext, record: TaskRecord, as_of: AsOf) -> PageData:  # noqa: C901, PLR0912, PLR0915
    spec = record.spec
    w = Words(spec, record.names)
    chosen = events_as_of(record.events, as_of.moment)
    state: TaskState | None = None
    timeline: list[dict[str, Any]] = []
    progress: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    open_claims: dict[str, dict[str, Any]] = {}
    extensions: list[dict[str, Any]] = []
    pending_ext: dict[str, dict[str, Any]] = {}
    inspections: list[dict[str, Any]] = []
    reports: dict[str, list[dict[str, Any]]] = {}
    verifications: dict[str, list[dict[str, Any]]] = {}
    escalations: list[dict[str, Any]] = []
    row: dict[str, Any] | None
    for e in chosen:
        kind = getattr(e, "type", type(e).__name__)
        timeline.append({"seq": e.seq, "at": fmt_local(e.at, spec.timezone, seconds=True),
                         "actor": w.who(e.actor), "type": kind,
                         "label": EVENT_LABELS.get(kind, kind), "text": describe(e, w),
                         "proof": proof_text(e), "refused": isinstance(e, ev.CommandRejected)})
        before = state
        state = evolve(state, e)
        match e:
            case ev.ProgressReported():
                progress.append({"at": w.t(e.at), "who": w.who(e.actor), "percent": e.percent,
                                 "note": e.note, "meets": e.meets_report_node or ""})
            case ev.NodeClaimed():
                node = before.node(e.node) if before else None
                row = {"node": e.node, "at": w.t(e.at), "who": w.who(e.actor), "note": e.note,
                       "evidence": _evidence_rows(e.evidence),
                       "in_time": bool(node and e.at <= node.due),
                       "outcome": "待验收", "outcome_class": "wait", "decided": ""}
                claims.append(row)
                open_claims[e.node] = row
            case ev.NodeAccepted() | ev.ClaimRejected() | ev.FalseReportFound():
                claim = open_claims.pop(e.node, None)
                if claim is not None:
                    claim["decided"] = f"{w.t(e.at)} {w.who(e.actor)}"
                    if isinstance(e, ev.NodeAccepted):
                        via = f"经督查 {e.inspection_id}" if e.via == "inspection" else "经验收"
                        claim["outcome"], claim["outcome_class"] = f"{via}通过", "ok"
                    elif isinstance(e, ev.ClaimRejected):
                        claim["outcome"], claim["outcome_class"] = f"不通过：{e.reason}", "bad"
                    else:
                        claim["outcome"] = f"虚报（督查 {e.inspection_id} 发现未完成）"
                        claim["outcome_class"] = "bad"
            case ev.ExtensionRequested():
                row = {"node": e.node, "at": w.t(e.at), "who": w.who(e.actor),
                       "reason": e.reason, "current_due": w.t(e.current_due),
                       "proposed_due": w.t(e.proposed_due), "in_time": e.at < e.current_due,
                       "decision": "待审批", "decision_class": "wait", "granted_due": "—",
                       "original_due": "—"}
                extensions.append(row)
                pending_ext[e.node] = row
            case ev.ExtensionDecided():
                row = pending_ext.pop(e.node, None)
                if row is None:
                    row = {"node": e.node, "at": "—", "who": "—", "reason": "",
                           "current_due": w.t(e.previous_due), "proposed_due": "—",
                           "in_time": True}
                    extensions.append(row)
                row["decision"] = (f"{'批准' if e.approved else '不批准'}（{w.t(e.at)} "
                                   f"{w.who(e.actor)}）" + (f"：{e.reason}" if e.reason else ""))
                row["decision_class"] = "ok" if e.approved else "bad"
                row["granted_due"] = w.t(e.granted_due) if e.approved else "—"
                row["original_due"] = w.t(e.original_due)
            case ev.InspectionRecorded():
                inspections.append({
                    "id": e.inspection_id, "inspector": w.who(e.inspector),
                    "visited": w.t(e.visited_at), "place": e.place, "nodes": list(e.nodes),
                    "outcome": e.outcome, "recheck": e.recheck,
                    "findings": [{"id": f.finding_id, "severity": f.severity,
                                  "description": f.description, "node": f.node or "",
                                  "evidence": _evidence_rows(f.evidence)} for f in e.findings],
                    "proof": proof_text(e)})
            case ev.RectificationReported():
                reports.setdefault(e.finding_id, []).append(
                    {"at": w.t(e.at), "who": w.who(e.actor), "note": e.note,
                     "evidence": _evidence_rows(e.evidence)})
            case ev.RectificationVerified():
                verifications.setdefault(e.finding_id, []).append(
                    {"at": w.t(e.at), "who": w.who(e.actor), "passed": e.passed,
                     "note": e.note})
            case ev.EscalationFired():
                escalations.append({
                    "seq": e.seq, "step_key": e.step_key, "at": w.t(e.at),
                    "target": w.target(e.target_kind, e.target), "title": e.title,
                    "level": e.level, "notice": e.action == "notice", "demand": e.demand,
                    "required": w.t(e.required_at),
                    "reply_by": w.t(e.reply_by) if e.reply_by else "—", "document": ""})
            case _:
                pass
    assert state is not None  # the first event is TaskAssigned, and as-of never precedes it
    documents = {n["step_key"]: n for n in ctx.store.list_notices(record.task_id)}
    for x in escalations:
        doc = documents.get(x["step_key"])
        if doc is not None:
            x["document"] = doc["document"]
            # The printable 督办单 (A4 page and PDF), under its number if it has one.
            x["notice_id"], x["number"] = doc["id"], number_text(doc)
        x["reply"], x["reply_class"] = _reply_state(state.notice(x["step_key"]), w)
    at = as_of.moment or ctx.clock()
    step_titles = {st.code: st.title for ladder in spec.ladders.values() for st in ladder.steps}
    nodes = []
    for n in state.nodes:
        overdue = n.status == "open" and at > n.due
        nodes.append({
            "code": n.code, "title": n.title, "kind": "报送" if n.kind == "report" else "里程碑",
            "planned": n.planned_progress, "original_due": w.t(n.original_due),
            "due": w.t(n.due), "moved": n.due != n.original_due,
            "extensions": n.extensions_granted,
            "status": NODE_STATUS.get(n.status, n.status),
            "status_class": {"done": "ok", "claimed": "wait"}.get(n.status,
                                                                   "bad" if overdue else ""),
            "overdue": f"已逾期 {duration(at - n.due)}" if overdue else "",
            "claimed": w.t(n.claimed_at), "done": w.t(n.done_at),
            "on_time": "—" if n.on_time is None else ("按时" if n.on_time else "逾期"),
            "pending_extension": (w.t(n.pending_extension.proposed_due)
                                  if n.pending_extension else ""),
            "fired": [step_titles.get(code, code) for code in n.fired],
        })
    findings = []
    for f in state.findings:
        findings.append({
            "id": f.finding_id, "inspection": f.inspection_id, "node": f.node or "—",
            "severity": f.severity, "description": f.description,
            "evidence": _evidence_rows(f.evidence), "deadline": w.t(f.deadline),
            "overdue": f.status != "closed" and f.deadline is not None and at > f.deadline,
            "status": FINDING_STATUS.get(f.status, f.status),
            "status_class": {"closed": "ok", "reported": "wait"}.get(f.status, ""),
            "sent_back": f.sent_back, "closed": w.t(f.closed_at),
            "reports": reports.get(f.finding_id, []),
            "verifications": verifications.get(f.finding_id, []),
        })
    rules: RulesReport | None = None
    rules_error = None
    try:
        rules = check_rules(record.events, as_of.moment)
    except AuditInputError as exc:
        rules_error = str(exc)
    rungs = []
    if rules is not None:
        for r in rules.rungs:
            label, cls = RUNG_VERDICTS.get(r.verdict, (r.verdict, ""))
            delay = r.delay
            if r.verdict in ("late", "early") and delay is not None:
                label += f" {duration(delay)}"
            rungs.append({"target": w.target(r.target_kind, r.target), "cycle": r.cycle,
                          "required_now": r.verdict != "not required",
                          "title": r.title, "level": r.level,
                          "required": w.t(r.required_at or r.rung_time),
                          "fired": w.t(r.fired_at) if r.fired_at else "未触发",
                          "verdict": label, "verdict_class": cls, "note": r.note})
    data = PageData(record, state, chosen, as_of, w)
    data.sections = {
        "nodes": nodes, "progress": progress, "claims": claims, "extensions": extensions,
        "inspections": inspections, "findings": findings, "escalations": escalations,
        "timeline": timeline, "rungs": rungs, "rules_ok": rules.ok if rules else None,
        "rules_problems": len(rules.problems) if rules else 0, "rules_error": rules_error,
        "rules_as_of": w.t(rules.as_of) if rules else "",
    }
    return data


def _notice_label(state: TaskState, n: NoticeState) -> str:
    """"督办单（节点 fa，2026-12-04 05:42 下发）": the step's title from the task's ladders, what it
    concerned (step key "<kind>:<target>:<cycle>:<step>"), and when it was issued."""
    parts = n.step_key.split(":")
    step, target = (parts[-1], parts[1]) if len(parts) >= 4 else (n.step_key, "")
    titles = {st.code: st.title for lad in state.spec.ladders.values() for st in lad.steps}
    about = f"{'问题' if parts[0] == 'finding' else '节点'} {target}，" if target else ""
    return f"{titles.get(step, step)}（{about}{local_text(n.issued_at, state.spec.timezone)} 下发）"


def form_choices(state: TaskState) -> dict[str, list[dict[str, str]]]:
    """What each form can be about now: the nodes and findings in the state it needs."""
    def node(n: Any, extra: str = "") -> dict[str, str]:
        return {"value": n.code, "label": f"{n.code} {n.title}{extra}"}

    def finding(f: Any) -> dict[str, str]:
        return {"value": f.finding_id,
                "label": f"{f.finding_id}（{f.severity}）{f.description[:30]}"}

    return {
        "open_nodes": [node(n) for n in state.nodes if n.status == "open"],
        "extendable_nodes": [node(n) for n in state.nodes
                             if n.status == "open" and n.pending_extension is None],
        "claimed_nodes": [node(n) for n in state.nodes if n.status == "claimed"],
        "pending_extensions": [
            node(n, f"（申请延至 {local_text(n.pending_extension.proposed_due, state.spec.timezone)}）")
            for n in state.nodes if n.pending_extension is not None],
        "open_findings": [finding(f) for f in state.findings if f.status == "open"],
        "reported_findings": [finding(f) for f in state.findings if f.status == "reported"],
        "unsigned_notices": [
            {"value": n.step_key, "label": _notice_label(state, n)}
            for n in state.notices if n.signed_at is None],
    }


def visible_forms(viewer: Viewer, spec: TaskSpec, state: TaskState) -> list[str]:
    """The forms to show: allowed by the roster, and with something to act on."""
    allowed = allowed_forms(viewer, spec)
    ch = form_choices(state)
    needs = {
        "acknowledge": state.acknowledged_at is None and state.is_active,
        "progress": state.is_active,
        "claim": bool(ch["open_nodes"]) and state.is_active,
        "request_extension": bool(ch["extendable_nodes"]) and state.is_active,
        "report_rectification": bool(ch["open_findings"]),
        "acceptance": bool(ch["claimed_nodes"]),
        "decide_extension": bool(ch["pending_extensions"]),
        "verify_rectification": bool(ch["reported_findings"]),
        "inspect": state.status != "closed",
        "sign_notice": bool(ch["unsigned_notices"]) and state.status != "closed",
    }
    return [name for name in FORMS if name in allowed and needs.get(name, False)]


def done_message(record: TaskRecord, done: str | None, seqs: str | None) -> dict[str, Any] | None:
    """The workflow's answer to the command just sent, named by the redirect's query: which
    form, which events it recorded (shown from the record itself, never from the URL's text)."""
    if not done or done not in FORMS and done != "already":
        return None
    if done == "already":
        return {"title": "此前已记录", "events": [], "pending": False}
    w = Words(record.spec, record.names)
    first = last = 0
    m = re.fullmatch(r"(\d{1,9})-(\d{1,9})", seqs or "")
    if m:
        first, last = int(m.group(1)), int(m.group(2))
    shown = [{"seq": e.seq, "label": EVENT_LABELS.get(getattr(e, "type", ""), ""),
              "text": describe(e, w)} for e in record.events if first <= e.seq <= last]
    return {"title": f"{FORMS[done][0]}：已受理", "events": shown,
            "pending": bool(m) and len(shown) < last - first + 1}


def render_task(request: Request, viewer: Viewer, record: TaskRecord, *,
                as_of: str | None = None, status_code: int = 200,
                form: str | None = None, errors: dict[str, str] | None = None,
                values: dict[str, str] | None = None, refusal: dict[str, str] | None = None,
                done: dict[str, Any] | None = None) -> Response:
    """The task page; after a refused form, with its errors beside its fields and its values."""
    ctx = ctx_of(request)
    ao = parse_as_of_param(as_of, record.spec, record.events[0].at)
    data = build(ctx, record, ao)
    present = ao.moment is None
    forms = visible_forms(viewer, record.spec, data.state) if present else []
    if form and form not in forms and form in FORMS:
        forms.append(form)  # keep the refused form on the page, with its errors
    return render(
        request, "task.html", status_code=status_code if not ao.error else 400,
        task_id=record.task_id, task_url=task_url(record.task_id), spec=record.spec,
        state=data.state, s=data.sections, as_of=ao, present=present,
        state_light=LIGHT_WORDS.get(data.state.light, data.state.light),
        status_label=_status(data.state),
        forms=forms, form_titles={k: v[0] for k, v in FORMS.items()},
        choices=form_choices(data.state), form=form, errors=errors or {},
        values=values or {}, refusal=refusal, done=done,
        read_only=viewer.read_only, refusal_codes=REFUSAL_CODES,
        today=ctx.clock().astimezone(ZoneInfo(record.spec.timezone)).date().isoformat(),
    )


def _status(state: TaskState) -> str:
    return {"assigned": "已下达", "acknowledged": "已签收", "in_progress": "推进中",
            "completed": "已完成", "closed": "已销号"}.get(state.status, state.status)


@router.get("/tasks/{task_id:path}")
async def task_page(request: Request, viewer: ViewerDep, task_id: str,
                    as_of: str | None = None, done: str | None = None,
                    seq: str | None = None) -> Response:
    record = load_task(ctx_of(request), viewer, task_id)
    return render_task(request, viewer, record, as_of=as_of,
                       done=done_message(record, done, seq))
