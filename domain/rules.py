"""The time rules: which ladder rungs are due, the task's light, and its next wake-up.

All three are pure functions of (state, now), so the workflow's timers, the auditor's
`audit rules` and the property tests ask the same questions of the same code.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from domain.calendar import Calendar
from domain.events import Light
from domain.ladder import Ladder, LadderStep
from domain.state import TaskState

_LIGHT_RANK: dict[Light, int] = {"green": 0, "yellow": 1, "red": 2}


@dataclass(frozen=True)
class Target:
    """Something that can be late: a node, a rectification order, an unresolved false report."""

    kind: str  # "node" | "finding" | "false_report"
    ident: str
    base: dt.datetime  # the instant it became due; rungs count from here
    ladder: Ladder
    steps: tuple[LadderStep, ...]
    fired: tuple[str, ...]
    cycle: int
    timezone: str
    calendar: Calendar  # the task's recorded working days (its spec's, as last updated)

    def key(self, step: LadderStep) -> str:
        return f"{self.kind}:{self.ident}:{self.cycle}:{step.code}"

    def rung_time(self, step: LadderStep) -> tuple[dt.datetime, tuple[int, ...]]:
        """When the ladder names this rung (and any unpublished calendar years it crossed)."""
        return step.after.after(self.base, self.timezone, self.calendar)


@dataclass(frozen=True)
class Rung:
    target: Target
    step: LadderStep
    required_at: dt.datetime
    calendar_estimated: tuple[int, ...]


def main_ladder(state: TaskState) -> Ladder:
    return state.spec.ladders[state.spec.ladder]


def active_targets(state: TaskState) -> list[Target]:
    spec = state.spec
    main = main_ladder(state)
    cal = spec.working_calendar
    out: list[Target] = []
    for n in state.nodes:
        if state.is_active and n.status == "open":
            out.append(Target("node", n.code, n.due, main, main.steps_from(spec.start_level),
                              n.fired, n.cycle, spec.timezone, cal))
        if n.false_report_at is not None and n.status != "done":
            lad = spec.ladders[main.false_report_ladder]
            out.append(Target("false_report", n.code, n.false_report_at, lad, lad.steps,
                              n.false_fired, n.false_cycle, spec.timezone, cal))
    rect = spec.ladders[main.rectification_ladder]
    for f in state.findings:
        if f.status == "open" and f.deadline is not None:
            out.append(Target("finding", f.finding_id, f.deadline, rect, rect.steps, f.fired, 0,
                              spec.timezone, cal))
    return out


def due_rungs(state: TaskState, now: dt.datetime) -> list[Rung]:
    """Rungs whose time has come and which have not fired in this cycle, in firing order."""
    rungs: list[Rung] = []
    for t in active_targets(state):
        for step in t.steps:
            if step.code in t.fired:
                continue
            at, est = t.rung_time(step)
            if at > now:
                break  # rungs climb in time: a later one waits for this one
            rungs.append(Rung(t, step, at, est))
    rungs.sort(key=lambda r: (r.required_at, r.target.kind, r.target.ident, r.step.level))
    return rungs


def current_level(state: TaskState) -> int:
    level = 0
    for t in active_targets(state):
        for step in t.steps:
            if step.code in t.fired:
                level = max(level, step.level)
    return level


# --- progress against plan -------------------------------------------------------------------

def _progress_points(state: TaskState) -> list[tuple[dt.datetime, int]]:
    pts = [(state.spec.started_at, 0)]
    for n in sorted(state.nodes, key=lambda n: n.due):
        if n.planned_progress > pts[-1][1] and n.due > pts[-1][0]:
            pts.append((n.due, n.planned_progress))
    return pts


def planned_progress(state: TaskState, now: dt.datetime) -> int:
    """Planned progress (whole points) at `now`, linear between the 倒排工期 nodes."""
    pts = _progress_points(state)
    if now <= pts[0][0]:
        return 0
    for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False):
        if now < t1:
            span = (t1 - t0) // dt.timedelta(microseconds=1)
            done = (now - t0) // dt.timedelta(microseconds=1)
            return p0 + (p1 - p0) * done // span
    return pts[-1][1]


def _when_planned_reaches(state: TaskState, value: int) -> dt.datetime | None:
    pts = _progress_points(state)
    for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False):
        if p0 < value <= p1:
            span = (t1 - t0) // dt.timedelta(microseconds=1)
            micros = -(-(value - p0) * span // (p1 - p0))  # ceiling: be at or past it
            return t0 + dt.timedelta(microseconds=micros)
    return None


def effective_progress(state: TaskState) -> int:
    """Reported progress, but never below what accepted nodes prove."""
    done = [n.planned_progress for n in state.nodes if n.status == "done"]
    return max([state.progress, *done])


# --- the light ----------------------------------------------------------------------------

def light_at(state: TaskState, now: dt.datetime) -> tuple[Light, tuple[str, ...]]:
    if not state.is_active:
        return "green", ()
    main = main_ladder(state)
    reasons: list[tuple[Light, str]] = []
    for n in state.nodes:
        if n.status == "open":
            if now >= n.due:
                reasons.append(("red", f"node {n.code} overdue"))
            elif now >= main.yellow_before.before(n.due):
                reasons.append(("yellow", f"node {n.code} due soon"))
        if n.false_report_at is not None and n.status != "done":
            reasons.append(("red", f"node {n.code} falsely reported done"))
    rect = state.spec.ladders[main.rectification_ladder]
    for f in state.findings:
        if f.status == "open" and f.deadline is not None:
            if now >= f.deadline:
                reasons.append(("red", f"rectification {f.finding_id} overdue"))
            elif now >= rect.yellow_before.before(f.deadline):
                reasons.append(("yellow", f"rectification {f.finding_id} due soon"))
    behind = planned_progress(state, now) - effective_progress(state)
    if behind > main.progress_red_behind:
        reasons.append(("red", f"{behind} points behind planned progress"))
    elif behind >= main.progress_yellow_behind > 0:
        reasons.append(("yellow", f"{behind} points behind planned progress"))
    if not reasons:
        return "green", ()
    worst = max(reasons, key=lambda r: _LIGHT_RANK[r[0]])[0]
    return worst, tuple(msg for light, msg in reasons if light == worst)


# --- the next wake-up ---------------------------------------------------------------------

def next_wakeup(state: TaskState, now: dt.datetime, *,
                reply_missed: bool = True) -> dt.datetime | None:
    """The earliest future instant at which the light or a rung may change by time alone, or
    (`reply_missed`) a notice's 反馈时限 pass unanswered."""
    cands: list[dt.datetime] = []
    if state.status == "closed":
        return None
    if reply_missed:
        cands += [n.reply_by for n in state.notices if n.awaiting_reply and n.reply_by is not None]
    if state.is_active:
        main = main_ladder(state)
        for n in state.nodes:
            if n.status == "open":
                cands += [main.yellow_before.before(n.due), n.due]
        rect = state.spec.ladders[main.rectification_ladder]
        for f in state.findings:
            if f.status == "open" and f.deadline is not None:
                cands += [rect.yellow_before.before(f.deadline), f.deadline]
        eff = effective_progress(state)
        for threshold in (main.progress_yellow_behind, main.progress_red_behind + 1):
            t = _when_planned_reaches(state, eff + threshold)
            if t is not None:
                cands.append(t)
    for tgt in active_targets(state):
        for step in tgt.steps:
            if step.code not in tgt.fired:
                at = tgt.rung_time(step)[0]
                if at > now:  # a rung already due is the caller's to fire; look past it
                    cands.append(at)
                    break
    for t in (state.recheck_due, state.recheck_until):
        if t is not None:
            cands.append(t)
    future = [c for c in cands if c > now]
    return min(future) if future else None


def deadline_of(state: TaskState) -> dt.datetime | None:
    """The next node due time still open: the board's "next due"."""
    open_dues = [n.due for n in state.nodes if n.status != "done"]
    return min(open_dues) if open_dues and state.is_active else None
