"""`audit rules`: did every escalation fire when the rules said it must?

Nothing is taken from the recorded escalations themselves: the requirements are re-derived
from the stored events. The events are folded one by one (the workflow's own `evolve`); every
target the rules know (`domain.rules.active_targets`: an open node, an open rectification order,
an unresolved 虚报) gets, per cycle, the required time of each rung from its ladder
(`domain.rules.Target.rung_time`). A rung is required when its target is
still open at that instant; if the target was closed then (claimed, accepted, rectification
reported, ...) but opens again in the same cycle (a claim rejected, a rectification sent back),
the rules (`due_rungs`) require the rung from the instant it reopened. Each requirement is then
matched with the `EscalationFired` event of the same step key.

Also reported: node deadlines, 签收, claims and their outcome, extension requests (filed in
time?) and decisions with both dates, rectification orders and 虚报.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from audit.timeline import (
    AuditInputError,
    events_as_of,
    fmt_local,
    humanize,
    load_events,
    parse_as_of,
)
from domain import events as ev
from domain.evolve import evolve
from domain.rules import active_targets
from domain.state import TaskState

__all__ = [
    "DEFAULT_GRACE",
    "PROBLEM_VERDICTS",
    "RulesReport",
    "RungVerdict",
    "check_rules",
    "rules_for_task",
]

# A timer fires when its workflow task runs: a loaded server may take seconds (measured here:
# 1,000 timers at one instant handled within ~27 s), so "on time" allows this much.
DEFAULT_GRACE = dt.timedelta(seconds=60)

# Rung verdicts that mean the system did not do what the rules required.
PROBLEM_VERDICTS = frozenset({"late", "missing", "unexpected", "early"})

Key = tuple[str, str, int]  # (target kind, target id, cycle)


@dataclass(frozen=True)
class RungVerdict:
    target_kind: str
    target: str
    cycle: int
    ladder: str
    step: str
    title: str
    level: int
    action: str
    due_since: dt.datetime | None
    rung_time: dt.datetime | None  # step.after.after(base): when the ladder names it
    required_at: dt.datetime | None  # when the rules required it (rung time, or a reopening)
    fired_at: dt.datetime | None
    fired_seq: int | None
    verdict: str  # on time | late | missing | pending | not due | not required | unexpected | early
    text: str
    note: str = ""

    @property
    def delay(self) -> dt.timedelta | None:
        if self.fired_at is None or self.required_at is None:
            return None
        return self.fired_at - self.required_at

    def to_json(self, tz: str) -> dict[str, Any]:
        delay = self.delay
        return {
            "target_kind": self.target_kind, "target": self.target, "cycle": self.cycle,
            "ladder": self.ladder, "step": self.step, "title": self.title, "level": self.level,
            "action": self.action,
            "due_since": _iso(self.due_since), "rung_time": _iso(self.rung_time),
            "required_at": _iso(self.required_at), "required_local": _loc(self.required_at, tz),
            "fired_at": _iso(self.fired_at), "fired_local": _loc(self.fired_at, tz),
            "fired_seq": self.fired_seq, "verdict": self.verdict, "text": self.text,
            "delay_seconds": int(delay.total_seconds()) if delay is not None else None,
            "note": self.note,
        }


@dataclass
class RulesReport:
    task_id: str
    timezone: str
    as_of: dt.datetime
    grace: dt.timedelta
    rungs: list[RungVerdict]
    nodes: list[dict[str, Any]]
    acknowledgement: dict[str, Any]
    claims: list[dict[str, Any]]
    extensions: list[dict[str, Any]]
    rectifications: list[dict[str, Any]]
    false_reports: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> list[RungVerdict]:
        return [r for r in self.rungs if r.verdict in PROBLEM_VERDICTS]

    @property
    def ok(self) -> bool:
        """No rung late, missing, early or unexpected (what `--strict` checks)."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        tz = self.timezone
        return {
            "task_id": self.task_id, "timezone": tz, "as_of": self.as_of.isoformat(),
            "as_of_local": _loc(self.as_of, tz), "grace_seconds": int(self.grace.total_seconds()),
            "ok": self.ok, "counts": self.counts,
            "rungs": [r.to_json(tz) for r in self.rungs],
            "nodes": self.nodes, "acknowledgement": self.acknowledgement,
            "claims": self.claims, "extensions": self.extensions,
            "rectifications": self.rectifications, "false_reports": self.false_reports,
        }


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _loc(moment: dt.datetime | None, tz: str) -> str | None:
    return fmt_local(moment, tz, seconds=True) if moment is not None else None


# --- the walk ---------------------------------------------------------------------------------


class _Walk:
    """The states after each event, and which targets were open in each."""

    def __init__(self, events: list[ev.Event]):
        self.events = events
        self.states: list[TaskState] = []
        self.active: list[dict[Key, Any]] = []
        state: TaskState | None = None
        latest: dt.datetime | None = None
        self.running_max: list[dt.datetime] = []
        for e in events:
            state = evolve(state, e)
            self.states.append(state)
            self.active.append({(t.kind, t.ident, t.cycle): t for t in active_targets(state)})
            latest = e.at if latest is None or e.at > latest else latest
            self.running_max.append(latest)

    def count_at(self, moment: dt.datetime) -> int:
        """How many leading events were recorded at or before `moment`."""
        lo, hi = 0, len(self.running_max)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.running_max[mid] <= moment:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def state_at(self, moment: dt.datetime) -> TaskState | None:
        k = self.count_at(moment)
        return self.states[k - 1] if k else None

    def required_from(self, key: Key, moment: dt.datetime) -> tuple[dt.datetime, int] | None:
        """The first instant at or after `moment` at which target `key` is open, and the index
        of the state that shows it (the rung's time if open then, else the reopening)."""
        k = self.count_at(moment)
        if k and key in self.active[k - 1]:
            return moment, k - 1
        for j in range(k, len(self.events)):
            if key in self.active[j]:
                return max(self.events[j].at, moment), j
        return None


def _why_not_open(walk: _Walk, key: Key, moment: dt.datetime, tz: str) -> str:
    kind, ident, cycle = key
    state = walk.state_at(moment)
    if state is None:
        return "the task did not exist yet"
    if kind in ("node", "false_report"):
        node = state.node(ident)
        if node is None:
            return f"no node {ident}"
        if kind == "node":
            if node.cycle != cycle:
                return (f"the due time had moved to {fmt_local(node.due, tz)} "
                        f"(cycle {node.cycle})")
            if not state.is_active:
                return f"the task was {state.status}"
            if node.status == "done":
                return f"node {ident} was done ({fmt_local(node.done_at, tz)})"
            if node.status == "claimed":
                return f"node {ident} was claimed done ({fmt_local(node.claimed_at, tz)})"
        else:
            if node.false_cycle != cycle:
                return f"a later 虚报 was found (cycle {node.false_cycle})"
            if node.status == "done":
                return f"node {ident} was accepted ({fmt_local(node.done_at, tz)})"
        return f"node {ident} was not open"
    finding = state.finding(ident)
    if finding is None:
        return f"no finding {ident}"
    if finding.status == "reported":
        return f"rectification reported ({fmt_local(finding.reported_at, tz)})"
    if finding.status == "closed":
        return f"finding closed ({fmt_local(finding.closed_at, tz)})"
    return f"finding {ident} was not open"


def _rung_verdicts(walk: _Walk, as_of: dt.datetime, grace: dt.timedelta,
                   tz: str) -> list[RungVerdict]:
    fired: dict[str, ev.EscalationFired] = {}
    for e in walk.events:
        if isinstance(e, ev.EscalationFired):
            fired.setdefault(e.step_key, e)
    targets: dict[Key, Any] = {}
    for active in walk.active:
        for key, t in active.items():
            targets.setdefault(key, t)
    out: list[RungVerdict] = []
    for key, t in targets.items():
        for step in t.steps:
            at, _est = t.rung_time(step)
            hit = fired.pop(t.key(step), None)
            common = {"target_kind": t.kind, "target": t.ident, "cycle": t.cycle,
                      "ladder": t.ladder.code, "step": step.code, "title": step.title,
                      "level": step.level, "action": step.action, "due_since": t.base,
                      "rung_time": at}
            fired_at = hit.at if hit is not None else None
            fired_seq = hit.seq if hit is not None else None
            req = walk.required_from(key, at) if at <= as_of else None
            if req is None and at <= as_of:
                why = _why_not_open(walk, key, at, tz)
                if hit is None:
                    out.append(RungVerdict(**common, required_at=None, fired_at=None,
                                           fired_seq=None, verdict="not required",
                                           text="not required", note=f"at its time {why}"))
                else:
                    out.append(RungVerdict(**common, required_at=None, fired_at=fired_at,
                                           fired_seq=fired_seq, verdict="unexpected",
                                           text="fired, not required",
                                           note=f"at its time {why}"))
                continue
            if at > as_of:
                open_now = key in walk.active[-1]
                if hit is not None:
                    out.append(RungVerdict(**common, required_at=at, fired_at=fired_at,
                                           fired_seq=fired_seq, verdict="early",
                                           text=f"early by {humanize(at - hit.at)}"))
                elif open_now:
                    out.append(RungVerdict(**common, required_at=at, fired_at=None,
                                           fired_seq=None, verdict="not due",
                                           text=f"not due (due {fmt_local(at, tz)})"))
                else:
                    why = _why_not_open(walk, key, as_of, tz)
                    out.append(RungVerdict(**common, required_at=None, fired_at=None,
                                           fired_seq=None, verdict="not required",
                                           text="not required", note=f"before its time {why}"))
                continue
            assert req is not None
            required_at, _idx = req
            note = ""
            if required_at > at:
                note = (f"target closed at the rung's time, reopened "
                        f"{fmt_local(required_at, tz, seconds=True)}")
            if hit is None:
                if as_of - required_at <= grace:
                    verdict, text = "pending", "due, within the grace period"
                else:
                    verdict, text = "missing", "missing: never fired"
                out.append(RungVerdict(**common, required_at=required_at, fired_at=None,
                                       fired_seq=None, verdict=verdict, text=text, note=note))
                continue
            delay = hit.at - required_at
            if delay < dt.timedelta(0):
                verdict, text = "early", f"early by {humanize(delay)}"
            elif delay <= grace:
                verdict, text = "on time", "on time"
            else:
                verdict, text = "late", f"late by {humanize(delay)}"
            if hit.required_at != at:
                note = (note + "; " if note else "") + (
                    f"the event says required {fmt_local(hit.required_at, tz, seconds=True)}")
            out.append(RungVerdict(**common, required_at=required_at, fired_at=fired_at,
                                   fired_seq=fired_seq, verdict=verdict, text=text, note=note))
    for hit in fired.values():  # fired for a target/cycle the rules never had open
        out.append(RungVerdict(
            target_kind=hit.target_kind, target=hit.target, cycle=-1, ladder=hit.ladder,
            step=hit.step, title=hit.title, level=hit.level, action=hit.action,
            due_since=hit.due_since, rung_time=hit.required_at, required_at=None,
            fired_at=hit.at, fired_seq=hit.seq, verdict="unexpected",
            text="fired, not required", note=f"no open target for step key {hit.step_key}"))
    out.sort(key=lambda r: (r.rung_time or r.fired_at or as_of, r.target_kind, r.target,
                            r.cycle, r.level))
    return out


# --- the rest of the record -------------------------------------------------------------------


def _nodes(state: TaskState, as_of: dt.datetime, tz: str) -> list[dict[str, Any]]:
    out = []
    for n in state.nodes:
        if n.status == "done":
            late = (n.claimed_at or n.done_at or as_of) - n.due
            if n.on_time:
                verdict, text = "on time", f"met on time ({fmt_local(n.done_at, tz)})"
            else:
                verdict, text = "late", f"met late by {humanize(late)}"
        elif n.status == "claimed":
            assert n.claimed_at is not None
            if n.claimed_at <= n.due:
                verdict, text = "claimed", "claimed in time, awaiting acceptance"
            else:
                verdict = "claimed"
                text = f"claimed late by {humanize(n.claimed_at - n.due)}, awaiting acceptance"
        elif as_of >= n.due:
            verdict, text = "open", f"open, overdue by {humanize(as_of - n.due)}"
        else:
            verdict, text = "not due", f"open, due in {humanize(n.due - as_of)}"
        out.append({
            "node": n.code, "title": n.title, "kind": n.kind,
            "original_due": n.original_due.isoformat(), "due": n.due.isoformat(),
            "due_local": fmt_local(n.due, tz), "extensions_granted": n.extensions_granted,
            "status": n.status, "claimed_at": _iso(n.claimed_at), "done_at": _iso(n.done_at),
            "on_time": n.on_time, "verdict": verdict, "text": text,
        })
    return out


def _acknowledgement(events: list[ev.Event], state: TaskState, tz: str) -> dict[str, Any]:
    assigned = events[0].at
    ack = next((e for e in events if isinstance(e, ev.Acknowledged)), None)
    first_work = next((e for e in events if isinstance(e, ev.ProgressReported | ev.NodeClaimed)),
                      None)
    if ack is None:
        return {"acknowledged": False, "at": None, "actor": None,
                "text": "签收 never happened" + (" (work was reported without it)"
                                                 if first_work else "")}
    after_work = first_work is not None and first_work.seq < ack.seq
    return {"acknowledged": True, "at": ack.at.isoformat(), "actor": ack.actor,
            "after_assignment_seconds": int((ack.at - assigned).total_seconds()),
            "after_work_began": after_work,
            "text": f"签收 {fmt_local(ack.at, tz)} by {ack.actor}, "
                    f"{humanize(ack.at - assigned)} after assignment"
                    + (" (after work had been reported)" if after_work else "")}


def _claims(events: list[ev.Event], tz: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    state: TaskState | None = None
    open_claims: dict[str, dict[str, Any]] = {}
    for e in events:
        before = state
        state = evolve(state, e)
        if isinstance(e, ev.NodeClaimed) and before is not None:
            node = before.node(e.node)
            due = node.due if node else None
            row: dict[str, Any] | None = {"node": e.node, "claimed_at": e.at.isoformat(),
                   "claimed_local": fmt_local(e.at, tz), "by": e.actor,
                   "due": _iso(due), "in_time": bool(due and e.at <= due),
                   "evidence": len(e.evidence), "outcome": "pending", "decided_at": None,
                   "decided_by": None, "text": "awaiting acceptance"}
            assert row is not None
            out.append(row)
            open_claims[e.node] = row
        elif isinstance(e, ev.ProgressReported) and e.meets_report_node:
            node = state.node(e.meets_report_node)
            due = node.due if node else None
            out.append({"node": e.meets_report_node, "claimed_at": e.at.isoformat(),
                        "claimed_local": fmt_local(e.at, tz), "by": e.actor, "due": _iso(due),
                        "in_time": bool(due and e.at <= due), "evidence": 0,
                        "outcome": "met by progress report", "decided_at": e.at.isoformat(),
                        "decided_by": e.actor, "text": "report node met by a progress report"})
        elif isinstance(e, ev.NodeAccepted | ev.ClaimRejected | ev.FalseReportFound):
            row = open_claims.pop(e.node, None)
            if row is None:
                continue
            row["decided_at"], row["decided_by"] = e.at.isoformat(), e.actor
            if isinstance(e, ev.NodeAccepted):
                via = f"inspection {e.inspection_id}" if e.via == "inspection" else "acceptance"
                row["outcome"] = "accepted"
                row["text"] = (f"accepted by {via} {fmt_local(e.at, tz)}, "
                               + ("on time" if e.on_time else "late"))
            elif isinstance(e, ev.ClaimRejected):
                row["outcome"] = "rejected"
                row["text"] = f"rejected {fmt_local(e.at, tz)}: {e.reason}"
            else:
                row["outcome"] = "false report"
                row["text"] = f"虚报: inspection {e.inspection_id} found it not done"
    for row in out:
        if row["outcome"] == "pending":
            row["text"] = "claimed " + ("in time" if row["in_time"] else "after the due time") \
                + ", awaiting acceptance"
    return out


def _extensions(events: list[ev.Event], tz: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: dict[str, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, ev.ExtensionRequested):
            in_time = e.at < e.current_due
            row: dict[str, Any] | None = {"node": e.node, "requested_at": e.at.isoformat(),
                   "requested_local": fmt_local(e.at, tz), "by": e.actor, "reason": e.reason,
                   "current_due": e.current_due.isoformat(),
                   "proposed_due": e.proposed_due.isoformat(), "in_time": in_time,
                   "decision": None,
                   "text": ("requested in time" if in_time else "requested after the due time")
                   + f" ({fmt_local(e.at, tz)}, due {fmt_local(e.current_due, tz)}); undecided"}
            assert row is not None
            out.append(row)
            pending[e.node] = row
        elif isinstance(e, ev.ExtensionDecided):
            row = pending.pop(e.node, None)
            decision = {"decided_at": e.at.isoformat(), "decided_local": fmt_local(e.at, tz),
                        "by": e.actor, "approved": e.approved, "reason": e.reason,
                        "original_due": e.original_due.isoformat(),
                        "previous_due": e.previous_due.isoformat(),
                        "granted_due": _iso(e.granted_due)}
            if row is None:
                out.append({"node": e.node, "requested_at": None, "in_time": None,
                            "decision": decision, "text": "decision without a request"})
                continue
            row["decision"] = decision
            head = "requested in time" if row["in_time"] else "requested after the due time"
            if e.approved:
                row["text"] = (f"{head}; approved {fmt_local(e.at, tz)} by {e.actor}: due "
                               f"{fmt_local(e.previous_due, tz)} → {fmt_local(e.granted_due, tz)}"
                               f" (original {fmt_local(e.original_due, tz)})")
            else:
                row["text"] = f"{head}; refused {fmt_local(e.at, tz)} by {e.actor}"
    return out


def _rectifications(events: list[ev.Event], state: TaskState, as_of: dt.datetime,
                    tz: str) -> list[dict[str, Any]]:
    ordered = {e.finding_id: e for e in events if isinstance(e, ev.RectificationOrdered)}
    reports: dict[str, list[ev.RectificationReported]] = {}
    verifications: dict[str, list[ev.RectificationVerified]] = {}
    for e in events:
        if isinstance(e, ev.RectificationReported):
            reports.setdefault(e.finding_id, []).append(e)
        elif isinstance(e, ev.RectificationVerified):
            verifications.setdefault(e.finding_id, []).append(e)
    out = []
    for f in state.findings:
        order = ordered.get(f.finding_id)
        deadline = f.deadline
        passed = next((v for v in verifications.get(f.finding_id, []) if v.passed), None)
        last_report = next((r for r in reversed(reports.get(f.finding_id, []))
                            if passed is None or r.seq < passed.seq), None)
        if f.status == "closed" and deadline is not None and last_report is not None:
            if last_report.at <= deadline:
                verdict, text = "on time", "rectified in time, verified"
            else:
                verdict = "late"
                text = f"rectified late by {humanize(last_report.at - deadline)}, verified"
        elif f.status == "closed":
            verdict, text = "closed", "closed"
        elif deadline is not None and as_of >= deadline:
            verdict, text = "open", f"{f.status}, overdue by {humanize(as_of - deadline)}"
        else:
            verdict, text = "not due", f"{f.status}, deadline {fmt_local(deadline, tz)}"
        out.append({
            "finding": f.finding_id, "inspection": f.inspection_id, "node": f.node,
            "severity": f.severity, "description": f.description,
            "ordered_at": _iso(order.at) if order else None, "deadline": _iso(deadline),
            "reports": [r.at.isoformat() for r in reports.get(f.finding_id, [])],
            "verifications": [{"at": v.at.isoformat(), "by": v.actor, "passed": v.passed}
                              for v in verifications.get(f.finding_id, [])],
            "sent_back": f.sent_back, "status": f.status, "closed_at": _iso(f.closed_at),
            "verdict": verdict, "text": text,
        })
    return out


def _false_reports(events: list[ev.Event], tz: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, ev.FalseReportFound):
            resolved = next((x for x in events if isinstance(x, ev.NodeAccepted)
                             and x.node == e.node and x.seq > e.seq), None)
            out.append({"node": e.node, "inspection": e.inspection_id,
                        "found_at": e.at.isoformat(), "claimed_at": _iso(e.claimed_at),
                        "resolved_at": _iso(resolved.at) if resolved else None,
                        "text": (f"found {fmt_local(e.at, tz)}; "
                                 + (f"node accepted {fmt_local(resolved.at, tz)}" if resolved
                                    else "unresolved"))})
    return out


# --- entry points -----------------------------------------------------------------------------


def check_rules(events: list[ev.Event], as_of: dt.datetime | None = None,
                grace: dt.timedelta = DEFAULT_GRACE,
                now: dt.datetime | None = None) -> RulesReport:
    """The verdicts for one task's events, as of `as_of` (default: the later of now and the last
    recorded event, i.e. everything recorded, judged at the present)."""
    if not events or not isinstance(events[0], ev.TaskAssigned):
        raise AuditInputError("the record must begin with TaskAssigned")
    tz = events[0].spec.timezone
    chosen = events_as_of(events, as_of)
    if not chosen:
        raise AuditInputError(f"task {events[0].task_id} did not exist yet at "
                              f"{fmt_local(as_of, tz)}")
    if as_of is None:
        now = now or dt.datetime.now(dt.UTC)
        as_of = max(now, max(e.at for e in chosen))
    walk = _Walk(chosen)
    state = walk.states[-1]
    rungs = _rung_verdicts(walk, as_of, grace, tz)
    counts: dict[str, int] = {}
    for r in rungs:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    return RulesReport(
        task_id=state.task_id, timezone=tz, as_of=as_of, grace=grace, rungs=rungs,
        nodes=_nodes(state, as_of, tz), acknowledgement=_acknowledgement(chosen, state, tz),
        claims=_claims(chosen, tz), extensions=_extensions(chosen, tz),
        rectifications=_rectifications(chosen, state, as_of, tz),
        false_reports=_false_reports(chosen, tz), counts=counts,
    )


def rules_for_task(store: Any, task_id: str, as_of: str | dt.datetime | None = None,
                   grace: dt.timedelta = DEFAULT_GRACE,
                   events: list[ev.Event] | None = None) -> RulesReport:
    events = load_events(store, task_id) if events is None else events
    first = events[0]
    if not isinstance(first, ev.TaskAssigned):
        raise AuditInputError(f"task {task_id}: the record must begin with TaskAssigned")
    moment = parse_as_of(as_of, first.spec.timezone) if isinstance(as_of, str) else as_of
    return check_rules(events, moment, grace)
