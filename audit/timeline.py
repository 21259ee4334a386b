"""`audit show`: a task's timeline and its state as of any instant, from the stored events.

The state is rebuilt by the same `evolve` fold the workflow ran, over the events recorded at or
before the instant asked about; each event also gets a short sentence saying what it did
("node N1 claimed done", "督办单 (level 2) issued: node N1 3 working days overdue").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from domain import events as ev
from domain.calendar import end_of_local_day
from domain.evolve import evolve
from domain.ladder import LadderStep, Offset
from domain.plan import TaskSpec
from domain.rules import light_at
from domain.state import TaskState

__all__ = [
    "AuditInputError",
    "TaskView",
    "TimelineEntry",
    "describe",
    "events_as_of",
    "fmt_local",
    "humanize",
    "load_events",
    "offset_text",
    "parse_as_of",
    "show",
    "spec_summary",
    "state_as_of",
    "state_summary",
    "steps_for",
    "timeline",
]


class AuditInputError(ValueError):
    """The audit cannot run as asked (unknown task, unparseable time, empty record...)."""


# --- loading and as-of -----------------------------------------------------------------------


def load_events(store: Any, task_id: str) -> list[ev.Event]:
    """A task's stored events, parsed into domain events, in seq order."""
    stored = store.load(task_id)
    if not stored:
        raise AuditInputError(f"no events stored for task {task_id!r}")
    out: list[ev.Event] = []
    for row in stored:
        try:
            out.append(ev.parse_event(row.event))
        except ValueError as exc:
            raise AuditInputError(f"task {task_id}: stored event seq {row.seq} is not a valid "
                                  f"domain event: {exc}") from exc
    return out


def parse_as_of(value: str | None, timezone: str) -> dt.datetime | None:
    """An instant from the command line: an ISO time with offset; a naive time is read in the
    plan's zone; a bare date means the end of that local day ("as of 3月31日")."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            return end_of_local_day(dt.date.fromisoformat(text), timezone)
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise AuditInputError(f"--as-of {value!r}: expected a date (2026-03-31) or an ISO time "
                              f"(2026-03-31T18:00, 2026-03-31T18:00+08:00)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return moment.astimezone(dt.UTC)


def events_as_of(events: list[ev.Event], as_of: dt.datetime | None) -> list[ev.Event]:
    """The leading events recorded at or before `as_of` (all of them when it is None)."""
    if as_of is None:
        return list(events)
    out: list[ev.Event] = []
    for e in events:
        if e.at > as_of:
            break
        out.append(e)
    return out


def state_as_of(events: list[ev.Event], as_of: dt.datetime | None) -> TaskState | None:
    """The fold of the events recorded at or before `as_of`; None if the task did not exist yet."""
    state: TaskState | None = None
    for e in events_as_of(events, as_of):
        state = evolve(state, e)
    return state


# --- words ------------------------------------------------------------------------------------


def fmt_local(moment: dt.datetime | None, timezone: str, seconds: bool = False) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(ZoneInfo(timezone)).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def humanize(delta: dt.timedelta) -> str:
    """3d 4h 05m, 2h 00m, 45s."""
    total = int(abs(delta).total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def offset_text(offset: Offset) -> str:
    parts = []
    for n, word in ((offset.working_days, "working day"), (offset.days, "day"),
                    (offset.hours, "hour"), (offset.minutes, "minute")):
        if n:
            parts.append(f"{n} {word}{'' if n == 1 else 's'}")
    return " ".join(parts)


def steps_for(spec: TaskSpec, kind: str) -> tuple[LadderStep, ...]:
    """The rungs a target of this kind climbs (as `domain.rules.active_targets` builds them)."""
    main = spec.ladders[spec.ladder]
    if kind == "node":
        return main.steps_from(spec.start_level)
    if kind == "false_report":
        return spec.ladders[main.false_report_ladder].steps
    return spec.ladders[main.rectification_ladder].steps


def _step(spec: TaskSpec, kind: str, code: str) -> LadderStep | None:
    return next((s for s in steps_for(spec, kind) if s.code == code), None)


def _target_words(kind: str, target: str) -> str:
    if kind == "finding":
        return f"rectification {target}"
    if kind == "false_report":
        return f"虚报 on node {target}"
    return f"node {target}"


def _escalation(e: ev.EscalationFired, spec: TaskSpec) -> str:
    step = _step(spec, e.target_kind, e.step)
    late = offset_text(step.after) if step is not None else ""
    what = _target_words(e.target_kind, e.target)
    if e.target_kind == "false_report":
        state = f"{what}, {late} unresolved" if late else f"{what}"
    else:
        state = f"{what} {late} overdue" if late else f"{what} overdue"
    verb = "issued" if e.action == "notice" else "sent"
    reply = f"; reply by {fmt_local(e.reply_by, spec.timezone)}" if e.reply_by else ""
    return f"{e.title} (level {e.level}) {verb}: {state}{reply}"


def describe(e: ev.Event, before: TaskState | None) -> str:  # noqa: C901 - one line per type
    """One short sentence: what this event did."""
    spec = e.spec if isinstance(e, ev.TaskAssigned) else (before.spec if before else None)
    tz = spec.timezone if spec else "UTC"

    def t(moment: dt.datetime | None) -> str:
        return fmt_local(moment, tz)

    match e:
        case ev.TaskAssigned():
            nodes = ", ".join(f"{n.code} by {t(n.due)}" for n in e.spec.nodes)
            return (f"task assigned to {e.spec.unit.name} ({e.spec.unit.code}), lead "
                    f"{e.spec.lead_unit.name}; ladder {e.spec.ladder}; nodes: {nodes}")
        case ev.Acknowledged():
            return "签收: task acknowledged" + (f" ({e.note})" if e.note else "")
        case ev.ProgressReported():
            text = f"progress {e.percent}% reported"
            if e.meets_report_node:
                text += f"; meets report node {e.meets_report_node}"
            return text + (f" ({e.note})" if e.note else "")
        case ev.NodeClaimed():
            ev_n = f", {len(e.evidence)} evidence file(s)" if e.evidence else ""
            return f"node {e.node} claimed done (申请销号){ev_n}"
        case ev.ClaimRejected():
            return f"claim on node {e.node} rejected: {e.reason}"
        case ev.NodeAccepted():
            via = (f"by inspection {e.inspection_id}" if e.via == "inspection"
                   else "by acceptance (验收)")
            timing = "on time" if e.on_time else "late"
            return f"node {e.node} accepted {via}: claimed {t(e.claimed_at)}, {timing}"
        case ev.ExtensionRequested():
            return (f"extension requested for node {e.node}: due {t(e.current_due)} → "
                    f"{t(e.proposed_due)} ({e.reason})")
        case ev.ExtensionDecided():
            if e.approved:
                return (f"extension for node {e.node} approved: due {t(e.previous_due)} → "
                        f"{t(e.granted_due)} (originally {t(e.original_due)})")
            return f"extension for node {e.node} refused" + (f": {e.reason}" if e.reason else "")
        case ev.InspectionRecorded():
            kind = "回头看 inspection" if e.recheck else "四不两直 inspection"
            nodes = f" of {', '.join(e.nodes)}" if e.nodes else ""
            return (f"{kind} {e.inspection_id}{nodes} at {e.place} by {e.inspector} "
                    f"(visited {t(e.visited_at)}): {e.outcome}, {len(e.findings)} finding(s)")
        case ev.RectificationOrdered():
            return (f"rectification ordered for finding {e.finding_id} ({e.severity}), "
                    f"deadline {t(e.deadline)}")
        case ev.RectificationReported():
            return f"rectification of finding {e.finding_id} reported (整改反馈)"
        case ev.RectificationVerified():
            if e.passed:
                return f"rectification of finding {e.finding_id} verified: closed (销号)"
            return f"rectification of finding {e.finding_id} sent back" + (
                f": {e.note}" if e.note else "")
        case ev.FalseReportFound():
            return (f"虚报: node {e.node} was claimed done ({t(e.claimed_at)}) but inspection "
                    f"{e.inspection_id} found it not done")
        case ev.NodeReopened():
            return f"node {e.node} reopened ({e.reason}); new due {t(e.new_due)}"
        case ev.EscalationFired():
            return _escalation(e, spec) if spec else f"{e.title} (level {e.level}) on {e.target}"
        case ev.LightChanged():
            why = f": {'; '.join(e.reasons)}" if e.reasons else ""
            return f"light {e.previous} → {e.light}{why}"
        case ev.TaskCompleted():
            return "task completed " + ("on time" if e.on_time else "late (a node was late)")
        case ev.RecheckScheduled():
            return (f"回头看 drawn (draw {e.draw}): re-inspection due {t(e.due_at)}, "
                    f"window until {t(e.until)}")
        case ev.RecheckRecorded():
            return (f"回头看 by {e.inspector} (visited {t(e.visited_at)}): "
                    + ("passed" if e.passed else "failed" + (
                        f", nodes {', '.join(e.nodes)} not done" if e.nodes else "")))
        case ev.TaskClosed():
            return f"task closed (销号): {e.reason}"
        case ev.CommandRejected():
            return f"command {e.command!r} refused ({e.code}): {e.reason}"
        case ev.NoticeSignedFor():
            return f"notice {e.step_key} signed for (签收)" + (f": {e.note}" if e.note else "")
        case ev.NoticeReplyMissed():
            return (f"notice {e.step_key} (issued {t(e.issued_at)}) neither signed for nor "
                    f"answered by its 反馈时限 {t(e.reply_by)}")
    return type(e).__name__


# --- the view ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEntry:
    seq: int
    at: dt.datetime
    local: str
    actor: str
    type: str
    effect: str
    proven: str = ""  # how the actor was proven (身份核验), for events a command caused

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at.isoformat(), "local": self.local,
                "actor": self.actor, "type": self.type, "effect": self.effect,
                "proven": self.proven}


def proven_words(proof: ev.ActorProof | None) -> str:
    """The proof in words: "signed by web (key 1a2b…)", "self-asserted", or "" (none recorded:
    the clock's events, and tasks started before signed commands)."""
    if proof is None:
        return ""
    if proof.method == "signed":
        return f"signed by {proof.sender} (key {proof.key})"
    return "self-asserted (unsigned)"


def timeline(events: list[ev.Event]) -> list[TimelineEntry]:
    out: list[TimelineEntry] = []
    state: TaskState | None = None
    tz = "UTC"
    for e in events:
        if isinstance(e, ev.TaskAssigned):
            tz = e.spec.timezone
        out.append(TimelineEntry(e.seq, e.at, fmt_local(e.at, tz, seconds=True), e.actor,
                                 getattr(e, "type", type(e).__name__), describe(e, state),
                                 proven_words(e.proof)))
        state = evolve(state, e)
    return out


def spec_summary(spec: TaskSpec) -> dict[str, Any]:
    tz = spec.timezone
    return {
        "task_id": spec.task_id, "plan": spec.plan_code, "plan_title": spec.plan_title,
        "task": spec.task_code, "title": spec.title, "category": spec.category,
        "standard": spec.standard, "unit": {"code": spec.unit.code, "name": spec.unit.name},
        "parent_unit": spec.parent_unit.code if spec.parent_unit else None,
        "lead_unit": {"code": spec.lead_unit.code, "name": spec.lead_unit.name},
        "major": spec.major, "start_level": spec.start_level, "timezone": tz,
        "started_at": spec.started_at.isoformat(), "ladder": spec.ladder,
        "nodes": [{"code": n.code, "title": n.title, "kind": n.kind, "due": n.due.isoformat(),
                   "due_local": fmt_local(n.due, tz), "planned_progress": n.planned_progress}
                  for n in spec.nodes],
    }


def state_summary(state: TaskState) -> dict[str, Any]:
    """The folded state as JSON (the workflow's `state` query has the same fields)."""
    return state.model_dump(mode="json", exclude={"spec"})


@dataclass(frozen=True)
class TaskView:
    task_id: str
    as_of: dt.datetime | None
    spec: TaskSpec
    entries: list[TimelineEntry]
    state: TaskState
    rules_light: tuple[str, tuple[str, ...]]  # the light the rules give at as_of

    def to_json(self) -> dict[str, Any]:
        tz = self.spec.timezone
        return {
            "task_id": self.task_id,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "as_of_local": fmt_local(self.as_of, tz, seconds=True) if self.as_of else None,
            "timezone": tz,
            "spec": spec_summary(self.spec),
            "timeline": [x.to_json() for x in self.entries],
            "state": state_summary(self.state),
            "light_by_rules_at_as_of": {"light": self.rules_light[0],
                                        "reasons": list(self.rules_light[1])},
        }


def show(store: Any, task_id: str, as_of: str | dt.datetime | None = None,
         events: list[ev.Event] | None = None) -> TaskView:
    """The timeline and state of `task_id` as of an instant (None: everything recorded)."""
    events = load_events(store, task_id) if events is None else events
    first = events[0]
    if not isinstance(first, ev.TaskAssigned):
        raise AuditInputError(f"task {task_id}: the first stored event is {type(first).__name__}, "
                              f"not TaskAssigned")
    tz = first.spec.timezone
    moment = parse_as_of(as_of, tz) if isinstance(as_of, str) or as_of is None else as_of
    chosen = events_as_of(events, moment)
    if not chosen:
        raise AuditInputError(f"task {task_id} did not exist yet at {fmt_local(moment, tz)} "
                              f"({tz}); it was assigned {fmt_local(first.at, tz)}")
    state = state_as_of(chosen, None)
    assert state is not None
    at = moment if moment is not None else state.last_at
    rules_light = light_at(state, at) if at is not None else (state.light, ())
    return TaskView(task_id, moment, state.spec, timeline(chosen), state, rules_light)
