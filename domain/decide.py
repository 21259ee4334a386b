"""`decide(state, command, now) -> events | Rejection` and `tick(state, now, draw) -> events`.

`decide` answers a person's command; `tick` is the clock: the rungs that came due, completion,
回头看 and the light. Neither does I/O or reads a clock: `now` comes from the workflow
(workflow.now()), so replay gives the same answer. Working days are counted on the task's
recorded calendar (`spec.working_calendar`), never on a live table. The 回头看 draw is derived
from recorded facts (`recheck_draw`), so an auditor recomputes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from domain import commands as c
from domain import events as ev
from domain.authz import authorise
from domain.calendar import end_of_local_day
from domain.evolve import evolve
from domain.ladder import Offset
from domain.plan import TaskSpec
from domain.rules import due_rungs, light_at, main_ladder
from domain.state import TaskState

Decision = list[ev.Event] | c.Rejection


class _Out:
    """Events being decided, each folded at once so later ones see earlier ones' effect."""

    def __init__(self, state: TaskState, now: dt.datetime, actor: str):
        self.state, self.now, self.actor = state, now, actor
        self.events: list[ev.Event] = []

    def add(self, cls: type[ev.Event], **fields: Any) -> None:
        fields.setdefault("actor", self.actor)
        e = cls(task_id=self.state.task_id, seq=self.state.last_seq + 1, at=self.now, **fields)
        self.state = evolve(self.state, e)
        self.events.append(e)


def _no(code: str, reason: str) -> c.Rejection:
    return c.Rejection.model_validate({"code": code, "reason": reason})


def _instant(state: TaskState, value: dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("a time needs its zone offset, e.g. 2026-12-31T18:00:00+08:00")
        return value.astimezone(dt.UTC)
    return end_of_local_day(value, state.spec.timezone)


def _fmt(t: dt.datetime, state: TaskState) -> str:
    return t.astimezone(ZoneInfo(state.spec.timezone)).strftime("%Y-%m-%d %H:%M")


def decide(state: TaskState, cmd: c.Command, now: dt.datetime) -> Decision:
    if state.status == "closed":
        return _no("closed", f"task {state.task_id} is closed (销号); it takes no more commands")
    refused = authorise(state.spec, cmd)
    if refused is not None:
        return refused
    handler = _HANDLERS.get(type(cmd))
    if handler is None:
        return _no("unknown_command", f"no rule for {type(cmd).__name__}")
    out = _Out(state, now, cmd.actor)
    try:
        refusal = handler(out, cmd)
    except ValueError as exc:
        return _no("malformed", str(exc))
    return refusal if refusal is not None else out.events


def _node_or_no(state: TaskState, code: str) -> Any:
    n = state.node(code)
    if n is None:
        known = ", ".join(x.code for x in state.nodes)
        return _no("unknown_node", f"task {state.task_id} has no node {code!r} (nodes: {known})")
    return n


def _acknowledge(o: _Out, cmd: c.Acknowledge) -> c.Rejection | None:
    if o.state.acknowledged_at is not None:
        return _no("duplicate", f"already acknowledged at {_fmt(o.state.acknowledged_at, o.state)}")
    o.add(ev.Acknowledged, note=cmd.note)
    return None


def _progress(o: _Out, cmd: c.ReportProgress) -> c.Rejection | None:
    s = o.state
    if not s.is_active:
        return _no("not_allowed", f"task is {s.status}; progress is no longer reported")
    if cmd.percent < s.progress:
        return _no("not_allowed", f"progress cannot go down: last reported {s.progress}%, got "
                                  f"{cmd.percent}% (explain a correction in the note instead)")
    report = next((n for n in sorted(s.nodes, key=lambda n: n.due)
                   if n.kind == "report" and n.status == "open"), None)
    o.add(ev.ProgressReported, percent=cmd.percent, note=cmd.note,
          meets_report_node=report.code if report else None)
    return None


def _claim(o: _Out, cmd: c.ClaimNode) -> c.Rejection | None:
    n = _node_or_no(o.state, cmd.node)
    if isinstance(n, c.Rejection):
        return n
    if n.kind == "report":
        return _no("not_allowed", f"node {n.code} is a report node: a progress report meets it")
    if n.status != "open":
        return _no("duplicate", f"node {n.code} is already {n.status}")
    o.add(ev.NodeClaimed, node=n.code, note=cmd.note, evidence=cmd.evidence)
    return None


def _accept(o: _Out, cmd: c.AcceptNode) -> c.Rejection | None:
    n = _node_or_no(o.state, cmd.node)
    if isinstance(n, c.Rejection):
        return n
    if n.status != "claimed" or n.claimed_at is None:
        return _no("not_allowed", f"node {n.code} is {n.status}: only a claimed node can be "
                                  f"accepted (the unit claims first: 申请销号)")
    o.add(ev.NodeAccepted, node=n.code, via="acceptance", claimed_at=n.claimed_at,
          on_time=n.claimed_at <= n.due, note=cmd.note)
    return None


def _reject_claim(o: _Out, cmd: c.RejectClaim) -> c.Rejection | None:
    n = _node_or_no(o.state, cmd.node)
    if isinstance(n, c.Rejection):
        return n
    if n.status != "claimed":
        return _no("not_allowed", f"node {n.code} is {n.status}, not claimed")
    o.add(ev.ClaimRejected, node=n.code, reason=cmd.reason)
    return None


def _request_extension(o: _Out, cmd: c.RequestExtension) -> c.Rejection | None:
    s = o.state
    n = _node_or_no(s, cmd.node)
    if isinstance(n, c.Rejection):
        return n
    if n.status == "done":
        return _no("not_allowed", f"node {n.code} is already done")
    if o.now >= n.due:
        return _no("too_late", f"an extension must be requested before the node's due time "
                               f"({_fmt(n.due, s)}); it is now {_fmt(o.now, s)}")
    if n.pending_extension is not None:
        return _no("duplicate", f"node {n.code} already has an extension request pending")
    proposed = _instant(s, cmd.proposed_due)
    if proposed <= n.due:
        return _no("not_allowed", f"proposed date {_fmt(proposed, s)} is not after the current "
                                  f"due time {_fmt(n.due, s)}")
    o.add(ev.ExtensionRequested, node=n.code, reason=cmd.reason, current_due=n.due,
          proposed_due=proposed)
    return None


def _decide_extension(o: _Out, cmd: c.DecideExtension) -> c.Rejection | None:
    s = o.state
    n = _node_or_no(s, cmd.node)
    if isinstance(n, c.Rejection):
        return n
    if n.pending_extension is None:
        return _no("not_allowed", f"node {n.code} has no pending extension request")
    if n.status == "done":
        return _no("not_allowed", f"node {n.code} is already done; no extension to decide")
    granted = None
    if cmd.approve:
        granted = (_instant(s, cmd.granted_due) if cmd.granted_due is not None
                   else n.pending_extension.proposed_due)
        if granted <= n.due:
            return _no("not_allowed", f"granted date {_fmt(granted, s)} is not after the current "
                                      f"due time {_fmt(n.due, s)}")
    elif cmd.granted_due is not None:
        return _no("malformed", "a refusal takes no granted_due")
    o.add(ev.ExtensionDecided, node=n.code, approved=cmd.approve, reason=cmd.reason,
          original_due=n.original_due, previous_due=n.due, granted_due=granted)
    return None


def _finding_deadline(s: TaskState, severity: str, now: dt.datetime) -> dt.datetime:
    within = main_ladder(s).rectification_within.get(severity)  # type: ignore[call-overload]
    return (within or Offset(working_days=5)).after(now, s.spec.timezone,
                                                    s.spec.working_calendar)[0]


def _inspect(o: _Out, cmd: c.RecordInspection) -> c.Rejection | None:
    s = o.state
    visited = _instant(s, cmd.visited_at)
    if visited > o.now:
        return _no("not_allowed", f"visit time {_fmt(visited, s)} is in the future")
    if visited < s.spec.started_at:
        return _no("not_allowed", f"visit time {_fmt(visited, s)} is before the task began "
                                  f"({_fmt(s.spec.started_at, s)})")
    if any(i.inspection_id == cmd.inspection_id for i in s.inspections):
        return _no("duplicate", f"inspection {cmd.inspection_id} is already recorded")
    for code in (*cmd.nodes, *(f.node for f in cmd.findings if f.node)):
        n = _node_or_no(s, code)
        if isinstance(n, c.Rejection):
            return n
    if cmd.outcome == "达标" and cmd.findings:
        return _no("malformed", "an inspection with outcome 达标 lists no findings; use 基本达标")
    findings = []
    taken = {f.finding_id for f in s.findings}
    for i, fin in enumerate(cmd.findings, start=1):
        fid = fin.finding_id or f"{cmd.inspection_id}-{i}"
        if fid in taken:
            return _no("duplicate", f"finding id {fid} is already used in this task")
        taken.add(fid)
        findings.append(ev.Finding(finding_id=fid, severity=fin.severity,
                                   description=fin.description, node=fin.node,
                                   evidence=fin.evidence))
    o.add(ev.InspectionRecorded, inspection_id=cmd.inspection_id, inspector=cmd.actor,
          visited_at=visited, place=cmd.place, nodes=cmd.nodes, outcome=cmd.outcome,
          findings=tuple(findings))
    for code in cmd.nodes:
        n = o.state.node(code)
        assert n is not None
        if cmd.outcome == "不达标" and n.status in ("claimed", "done"):
            o.add(ev.FalseReportFound, node=code, inspection_id=cmd.inspection_id,
                  claimed_at=n.claimed_at)
        elif cmd.outcome != "不达标" and n.status == "claimed" and n.claimed_at is not None:
            o.add(ev.NodeAccepted, node=code, via="inspection", inspection_id=cmd.inspection_id,
                  claimed_at=n.claimed_at, on_time=n.claimed_at <= n.due)
    for f in findings:
        o.add(ev.RectificationOrdered, finding_id=f.finding_id, severity=f.severity,
              deadline=_finding_deadline(o.state, f.severity, o.now))
    return None


def _report_rectification(o: _Out, cmd: c.ReportRectification) -> c.Rejection | None:
    f = o.state.finding(cmd.finding_id)
    if f is None:
        return _no("unknown_finding", f"no finding {cmd.finding_id!r} on this task")
    if f.status != "open":
        return _no("not_allowed", f"finding {f.finding_id} is {f.status}, not open")
    o.add(ev.RectificationReported, finding_id=f.finding_id, note=cmd.note,
          evidence=cmd.evidence)
    return None


def _verify_rectification(o: _Out, cmd: c.VerifyRectification) -> c.Rejection | None:
    f = o.state.finding(cmd.finding_id)
    if f is None:
        return _no("unknown_finding", f"no finding {cmd.finding_id!r} on this task")
    if f.status != "reported":
        return _no("not_allowed", f"finding {f.finding_id} is {f.status}: the unit reports its "
                                  f"rectification first (整改反馈)")
    o.add(ev.RectificationVerified, finding_id=f.finding_id, passed=cmd.passed, note=cmd.note)
    return None


def _recheck(o: _Out, cmd: c.RecordRecheck) -> c.Rejection | None:
    s = o.state
    if s.status != "completed" or s.recheck_due is None:
        return _no("not_allowed", "this task is not drawn for 回头看 (or not completed)")
    visited = _instant(s, cmd.visited_at)
    if visited > o.now:
        return _no("not_allowed", f"visit time {_fmt(visited, s)} is in the future")
    for code in cmd.nodes:
        n = _node_or_no(s, code)
        if isinstance(n, c.Rejection):
            return n
    o.add(ev.RecheckRecorded, inspector=cmd.actor, visited_at=visited, passed=cmd.passed,
          nodes=cmd.nodes, note=cmd.note)
    if cmd.passed:
        o.add(ev.TaskClosed, reason="回头看 passed")
        return None
    reopen = (cmd.nodes or tuple(n.code for n in s.nodes if n.kind == "milestone")
              or tuple(n.code for n in s.nodes))
    within = main_ladder(s).reopen_within
    for code in reopen:
        o.add(ev.NodeReopened, node=code, reason="回头看 found it not done",
              new_due=within.after(o.now, s.spec.timezone, s.spec.working_calendar)[0])
    return None


def _sign_notice(o: _Out, cmd: c.SignNotice) -> c.Rejection | None:
    n = o.state.notice(cmd.step_key)
    if n is None:
        known = ", ".join(x.step_key for x in o.state.notices) or "none yet"
        return _no("unknown_notice", f"task {o.state.task_id} has issued no notice "
                                     f"{cmd.step_key!r} (issued: {known})")
    if n.signed_at is not None:
        return _no("duplicate", f"notice {cmd.step_key} was signed for at "
                                f"{_fmt(n.signed_at, o.state)} by {n.signed_by}")
    o.add(ev.NoticeSignedFor, step_key=cmd.step_key, note=cmd.note)
    return None


def _update_calendar(o: _Out, cmd: c.UpdateCalendar) -> c.Rejection | None:
    s = o.state
    current, new = s.spec.working_calendar, cmd.calendar
    if new.fingerprint == current.fingerprint:
        return _no("duplicate", f"the task already counts working days on {current.label}")
    first = min(s.spec.started_at.astimezone(ZoneInfo(s.spec.timezone)).year, current.last_year)
    needed = range(max(first, current.first_year), current.last_year + 1)
    if not (new.covers(needed[0]) and new.covers(needed[-1])):
        return _no("not_allowed", f"the new calendar covers {new.first_year}–{new.last_year}; the "
                                  f"task's covers {needed[0]}–{needed[-1]}, which it must keep")
    dropped = [y for y in needed if current.is_published(y) and not new.is_published(y)]
    if dropped:
        return _no("not_allowed", f"year(s) {', '.join(map(str, dropped))} are officially "
                                  f"published in the task's calendar but not in the new one")
    newly = tuple(y for y in range(new.first_year, new.last_year + 1)
                  if new.is_published(y) and not current.is_published(y))
    o.add(ev.CalendarUpdated, previous_fingerprint=current.fingerprint, calendar=new,
          newly_published=newly, changed_years=current.changed_years(new), note=cmd.note)
    return None


_HANDLERS: dict[type[c.Command], Callable[[_Out, Any], c.Rejection | None]] = {
    c.Acknowledge: _acknowledge,
    c.ReportProgress: _progress,
    c.ClaimNode: _claim,
    c.AcceptNode: _accept,
    c.RejectClaim: _reject_claim,
    c.RequestExtension: _request_extension,
    c.DecideExtension: _decide_extension,
    c.RecordInspection: _inspect,
    c.ReportRectification: _report_rectification,
    c.VerifyRectification: _verify_rectification,
    c.RecordRecheck: _recheck,
    c.UpdateCalendar: _update_calendar,
    c.SignNotice: _sign_notice,
}


def reject(state: TaskState, name: str, actor: str, refusal: c.Rejection, payload: str,
           now: dt.datetime) -> ev.CommandRejected:
    """The record of a refused command: who tried what, and why. State is otherwise untouched."""
    return ev.CommandRejected(task_id=state.task_id, seq=state.last_seq + 1, at=now, actor=actor,
                              command=name[:120], code=refusal.code, reason=refusal.reason,
                              payload_excerpt=payload[:500])


def assign(spec: TaskSpec, now: dt.datetime) -> ev.TaskAssigned:
    return ev.TaskAssigned(task_id=spec.task_id, seq=1, at=now, actor=ev.SYSTEM, spec=spec)


RECHECK_DRAW_DOMAIN = "duban/recheck-draw/v1"


def recheck_draw(spec: TaskSpec, completed: ev.TaskCompleted) -> tuple[int, str]:
    """The 回头看 draw (0–99) of a task completed by `completed`, and the text it comes from.

    Derived from recorded facts only — the task, the seq and time of its completion event, and
    the plan's recheck seed (the plan code when none is set) — so it does not depend on how
    often the workflow woke, and an auditor recomputes it from the record:
    `int(sha256(basis).hexdigest(), 16) % 100`."""
    seed = spec.recheck.seed if spec.recheck.seed is not None else spec.plan_code
    basis = "\x1f".join((RECHECK_DRAW_DOMAIN, completed.task_id, str(completed.seq),
                         completed.at.astimezone(dt.UTC).isoformat(), seed))
    return int(hashlib.sha256(basis.encode("utf-8")).hexdigest(), 16) % 100, basis


def tick(state: TaskState, now: dt.datetime, draw: int | None = None, *,
         reply_by_rule_time: bool = True, reply_missed: bool = True) -> list[ev.Event]:
    """What time alone makes happen at `now`.

    A notice's 反馈时限 (`reply_by`) is the end of the step's `reply_within` window opened at the
    rung's rule time (`required_at`). `reply_by_rule_time=False` is the earlier rule — the
    window opened at the instant the rung fired, working days moving that instant — which
    the workflow passes for histories recorded before the change, so they replay unchanged.

    The 回头看 draw is `recheck_draw` of the completion event, recorded with its basis. `draw`
    (0..99) is given only when replaying tasks that drew from the workflow's randomness.

    A notice neither signed for nor answered by its 反馈时限 is recorded as missed at that
    time (`NoticeReplyMissed`), unless the task is closed; `reply_missed=False` (histories
    recorded before 签收 existed) records none."""
    o = _Out(state, now, ev.SYSTEM)
    cal = state.spec.working_calendar
    for rung in due_rungs(o.state, now):
        step, tgt = rung.step, rung.target
        reply_by = None
        if step.reply_within is not None and reply_by_rule_time:
            reply_by = step.reply_within.window_end(rung.required_at, state.spec.timezone, cal)[0]
        elif step.reply_within is not None:
            reply_by = step.reply_within.after(now, state.spec.timezone, cal)[0]
        o.add(ev.EscalationFired, step_key=tgt.key(step), target_kind=tgt.kind, target=tgt.ident,
              ladder=tgt.ladder.code, step=step.code, title=step.title, level=step.level,
              action=step.action, recipients=step.recipients, demand=step.demand,
              due_since=tgt.base, required_at=rung.required_at, reply_by=reply_by,
              calendar_estimated=rung.calendar_estimated)
    # After the rungs: one fired late, already past its 反馈时限, is missed at once (no timer
    # would wake for a time already gone).
    if reply_missed and o.state.status != "closed":
        for n in o.state.notices:
            if n.awaiting_reply and n.reply_by is not None and n.reply_by <= now:
                o.add(ev.NoticeReplyMissed, step_key=n.step_key, issued_at=n.issued_at,
                      reply_by=n.reply_by)
    s = o.state
    if (s.is_active and all(n.status == "done" for n in s.nodes)
            and all(f.status == "closed" for f in s.findings)):
        o.add(ev.TaskCompleted, on_time=all(bool(n.on_time) for n in s.nodes))
        completed = o.events[-1]
        assert isinstance(completed, ev.TaskCompleted)
        basis: str | None = None
        if draw is None:
            draw, basis = recheck_draw(s.spec, completed)
        policy = s.spec.recheck
        if draw < policy.percent:
            due_at = Offset(**policy.after).after(now, s.spec.timezone, cal)[0]
            until = Offset(**policy.window).after(due_at, s.spec.timezone, cal)[0]
            o.add(ev.RecheckScheduled, due_at=due_at, until=until, draw=draw, draw_basis=basis)
        else:
            o.add(ev.TaskClosed, reason=f"completed; not drawn for 回头看 (draw {draw} ≥ "
                                        f"{policy.percent}%)",
                  draw=draw if basis is not None else None, draw_basis=basis)
    s = o.state
    if s.status == "completed" and s.recheck_until is not None and now >= s.recheck_until:
        o.add(ev.TaskClosed, reason="回头看 window passed without a re-inspection")
    light, reasons = light_at(o.state, now)
    if light != o.state.light and o.state.status != "closed":
        o.add(ev.LightChanged, previous=o.state.light, light=light, reasons=reasons)
    return o.events
