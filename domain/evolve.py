"""`evolve(state, event) -> state`: the fold. The workflow and the auditor run this same code."""

from __future__ import annotations

from collections.abc import Iterable

from domain import events as ev
from domain.plan import TaskSpec
from domain.rules import current_level
from domain.state import (
    FindingState,
    InspectionState,
    NodeState,
    NoticeState,
    PendingExtension,
    TaskState,
)

# A unit's reports that answer the notices issued to it before them (反馈).
ANSWERS = (ev.ProgressReported, ev.NodeClaimed, ev.RectificationReported, ev.ExtensionRequested)


def initial_state(spec: TaskSpec) -> TaskState:
    nodes = tuple(
        NodeState(code=n.code, title=n.title, kind=n.kind, original_due=n.due, due=n.due,
                  planned_progress=n.planned_progress)
        for n in spec.nodes
    )
    return TaskState(spec=spec, last_seq=0, nodes=nodes)


def _node(state: TaskState, code: str, **changes: object) -> TaskState:
    nodes = tuple(n.model_copy(update=changes) if n.code == code else n for n in state.nodes)
    return state.model_copy(update={"nodes": nodes})


def _finding(state: TaskState, fid: str, **changes: object) -> TaskState:
    found = tuple(f.model_copy(update=changes) if f.finding_id == fid else f for f in state.findings)
    return state.model_copy(update={"findings": found})


def _working(state: TaskState) -> dict[str, object]:
    """Status once work is under way again (after a claim, a reopening, a false report)."""
    if state.status in ("assigned", "acknowledged", "completed"):
        return {"status": "in_progress", "completed_at": None, "recheck_due": None,
                "recheck_until": None}
    return {}


def _notice(state: TaskState, step_key: str, **changes: object) -> TaskState:
    notices = tuple(n.model_copy(update=changes) if n.step_key == step_key else n
                    for n in state.notices)
    return state.model_copy(update={"notices": notices})


def _answer(state: TaskState, at: object) -> TaskState:
    notices = tuple(n.model_copy(update={"answered_at": at})
                    if n.answered_at is None and n.missed_at is None else n
                    for n in state.notices)
    return state.model_copy(update={"notices": notices})


def evolve(state: TaskState | None, event: ev.Event) -> TaskState:
    if isinstance(event, ev.TaskAssigned):
        s = initial_state(event.spec)
    elif state is None:
        raise ValueError(f"the first event must be TaskAssigned, not {type(event).__name__}")
    elif event.seq != state.last_seq + 1:
        raise ValueError(f"event seq {event.seq} does not follow {state.last_seq}")
    else:
        s = _apply(state, event)
        if isinstance(event, ANSWERS):
            s = _answer(s, event.at)
    s = s.model_copy(update={"last_seq": event.seq, "last_at": event.at})
    return s.model_copy(update={"level": current_level(s)})


def _apply(s: TaskState, e: ev.Event) -> TaskState:  # noqa: C901 - one branch per event type
    match e:
        case ev.Acknowledged():
            # 签收 late (after work began) records the time but never moves the status back
            status = "acknowledged" if s.status == "assigned" else s.status
            return s.model_copy(update={"status": status, "acknowledged_at": e.at})
        case ev.ProgressReported():
            upd: dict[str, object] = {"progress": e.percent, "progress_at": e.at}
            if s.status in ("assigned", "acknowledged"):
                upd["status"] = "in_progress"
            s = s.model_copy(update=upd)
            if e.meets_report_node is not None:
                node = s.node(e.meets_report_node)
                on_time = node is not None and e.at <= node.due
                s = _node(s, e.meets_report_node, status="done", done_at=e.at, on_time=on_time,
                          claimed_at=e.at, claimed_by=e.actor, false_report_at=None)
            return s
        case ev.NodeClaimed():
            s = s.model_copy(update=_working(s))
            return _node(s, e.node, status="claimed", claimed_at=e.at, claimed_by=e.actor)
        case ev.ClaimRejected():
            return _node(s, e.node, status="open", claimed_at=None, claimed_by=None)
        case ev.NodeAccepted():
            return _node(s, e.node, status="done", done_at=e.at, on_time=e.on_time,
                         false_report_at=None, pending_extension=None)
        case ev.ExtensionRequested():
            pending = PendingExtension(requested_at=e.at, requested_by=e.actor,
                                       proposed_due=e.proposed_due, reason=e.reason)
            return _node(s, e.node, pending_extension=pending)
        case ev.ExtensionDecided():
            node = s.node(e.node)
            assert node is not None
            if not e.approved or e.granted_due is None:
                return _node(s, e.node, pending_extension=None)
            return _node(s, e.node, pending_extension=None, due=e.granted_due,
                         cycle=node.cycle + 1, fired=(),
                         extensions_granted=node.extensions_granted + 1)
        case ev.InspectionRecorded():
            insp = InspectionState(
                inspection_id=e.inspection_id, inspector=e.inspector, visited_at=e.visited_at,
                place=e.place, outcome=e.outcome, nodes=e.nodes, recheck=e.recheck,
                findings=tuple(f.finding_id for f in e.findings),
            )
            new = tuple(
                FindingState(finding_id=f.finding_id, inspection_id=e.inspection_id, node=f.node,
                             severity=f.severity, description=f.description, evidence=f.evidence)
                for f in e.findings
            )
            upd = {"inspections": (*s.inspections, insp), "findings": (*s.findings, *new)}
            if new:
                upd.update(_working(s))
            return s.model_copy(update=upd)
        case ev.RectificationOrdered():
            return _finding(s, e.finding_id, deadline=e.deadline)
        case ev.RectificationReported():
            return _finding(s, e.finding_id, status="reported", reported_at=e.at)
        case ev.RectificationVerified():
            f = s.finding(e.finding_id)
            assert f is not None
            if e.passed:
                return _finding(s, e.finding_id, status="closed", closed_at=e.at)
            return _finding(s, e.finding_id, status="open", reported_at=None,
                            sent_back=f.sent_back + 1)
        case ev.FalseReportFound():
            node = s.node(e.node)
            assert node is not None
            s = s.model_copy(update={**_working(s), "false_reports": s.false_reports + 1})
            return _node(s, e.node, status="open", claimed_at=None, claimed_by=None, done_at=None,
                         on_time=None, false_report_at=e.at, false_fired=(),
                         false_cycle=node.false_cycle + 1)
        case ev.NodeReopened():
            node = s.node(e.node)
            assert node is not None
            s = s.model_copy(update=_working(s))
            return _node(s, e.node, status="open", due=e.new_due, cycle=node.cycle + 1, fired=(),
                         claimed_at=None, claimed_by=None, done_at=None, on_time=None)
        case ev.EscalationFired():
            issued = NoticeState(step_key=e.step_key, action=e.action, issued_at=e.at,
                                 reply_by=e.reply_by)
            s = s.model_copy(update={"escalations": s.escalations + 1,
                                     "notices": (*s.notices, issued)})
            if e.target_kind == "node":
                n = s.node(e.target)
                assert n is not None
                return _node(s, e.target, fired=(*n.fired, e.step))
            if e.target_kind == "false_report":
                n = s.node(e.target)
                assert n is not None
                return _node(s, e.target, false_fired=(*n.false_fired, e.step))
            f = s.finding(e.target)
            assert f is not None
            return _finding(s, e.target, fired=(*f.fired, e.step))
        case ev.LightChanged():
            return s.model_copy(update={"light": e.light})
        case ev.TaskCompleted():
            return s.model_copy(update={"status": "completed", "completed_at": e.at})
        case ev.RecheckScheduled():
            return s.model_copy(update={"recheck_due": e.due_at, "recheck_until": e.until})
        case ev.RecheckRecorded():
            insp = InspectionState(
                inspection_id=f"recheck-{e.seq}", inspector=e.inspector, visited_at=e.visited_at,
                place="回头看", outcome="达标" if e.passed else "不达标", nodes=e.nodes,
                findings=(), recheck=True,
            )
            return s.model_copy(update={"recheck_due": None, "recheck_until": None,
                                        "inspections": (*s.inspections, insp)})
        case ev.TaskClosed():
            return s.model_copy(update={"status": "closed", "closed_at": e.at, "light": "green"})
        case ev.CommandRejected():
            return s.model_copy(update={"rejected_commands": s.rejected_commands + 1})
        case ev.NoticeSignedFor():
            return _notice(s, e.step_key, signed_at=e.at, signed_by=e.actor)
        case ev.NoticeReplyMissed():
            s = s.model_copy(update={"missed_replies": s.missed_replies + 1})
            return _notice(s, e.step_key, missed_at=e.at)
        case ev.CalendarUpdated():
            return s.model_copy(update={"spec": s.spec.model_copy(update={"calendar": e.calendar})})
        case _:
            raise ValueError(f"unknown event type {type(e).__name__}")


def fold(events: Iterable[ev.Event], state: TaskState | None = None) -> TaskState:
    for e in events:
        state = evolve(state, e)
    if state is None:
        raise ValueError("no events to fold")
    return state
