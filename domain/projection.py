"""Read models (the board's tables) as a pure function of a task's state.

Because they depend on the folded state only — never on the clock — a projection rebuilt from
the stored events alone equals the live one, row for row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from domain.events import (
    EscalationFired,
    Event,
    InspectionRecorded,
    RecheckRecorded,
    RectificationOrdered,
    RectificationReported,
    RectificationVerified,
)
from domain.rules import deadline_of
from domain.state import FindingState, InspectionState, TaskState


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskRow(Row):
    task_id: str
    plan_code: str
    task_code: str
    unit_code: str
    parent_unit: str | None
    unit_name: str | None = None
    # The township (乡镇/街道) the task counts under on the board: the responsible unit itself
    # if it is one, else its parent if that is one; None for county-level units.
    township: str | None = None
    township_name: str | None = None
    title: str
    lead_unit: str
    ladder: str
    status: str
    light: str
    level: int
    progress: int
    next_due_at: dt.datetime | None
    nodes: list[dict[str, Any]]
    open_findings: int
    last_seq: int
    updated_at: dt.datetime | None
    missed_replies: int = 0  # notices recorded as missing their 反馈时限 (逾期未反馈)


class InspectionRow(Row):
    inspection_id: str
    task_id: str
    inspector: str
    visited_at: dt.datetime
    place: str
    outcome: str
    nodes: list[str]
    findings_count: int


class FindingRow(Row):
    finding_id: str
    task_id: str
    inspection_id: str
    severity: str
    description: str
    status: str
    deadline: dt.datetime | None
    evidence: list[dict[str, Any]]
    closed_at: dt.datetime | None


class ReadModel(Row):
    task: TaskRow
    inspections: list[InspectionRow]
    findings: list[FindingRow]
    # False: `inspections` and `findings` are the task's whole sets (rows not listed go).
    # True: they are only the rows that changed; the task's other rows stay as they are. A
    # batch carries the changed rows only, so its size does not grow with the task's.
    partial: bool = False


def _task_row(state: TaskState) -> TaskRow:
    spec = state.spec
    nodes = [
        {"code": n.code, "title": n.title, "kind": n.kind, "status": n.status,
         "original_due": n.original_due.isoformat(), "due": n.due.isoformat(),
         "on_time": n.on_time}
        for n in state.nodes
    ]
    town = next((u for u in (spec.unit, spec.parent_unit)
                 if u is not None and u.kind == "township"), None)
    return TaskRow(
        task_id=spec.task_id, plan_code=spec.plan_code, task_code=spec.task_code,
        unit_code=spec.unit.code, parent_unit=spec.parent_unit.code if spec.parent_unit else None,
        unit_name=spec.unit.name, township=town.code if town else None,
        township_name=town.name if town else None,
        title=spec.title, lead_unit=spec.lead_unit.code, ladder=spec.ladder, status=state.status,
        light=state.light, level=state.level, progress=state.progress,
        next_due_at=deadline_of(state), nodes=nodes,
        open_findings=sum(1 for f in state.findings if f.status != "closed"),
        missed_replies=state.missed_replies,
        last_seq=state.last_seq, updated_at=state.last_at,
    )


def _inspection_row(state: TaskState, i: InspectionState) -> InspectionRow:
    return InspectionRow(inspection_id=i.inspection_id, task_id=state.spec.task_id,
                         inspector=i.inspector, visited_at=i.visited_at, place=i.place,
                         outcome=i.outcome, nodes=list(i.nodes), findings_count=len(i.findings))


def _finding_row(state: TaskState, f: FindingState) -> FindingRow:
    return FindingRow(finding_id=f.finding_id, task_id=state.spec.task_id,
                      inspection_id=f.inspection_id, severity=f.severity,
                      description=f.description, status=f.status, deadline=f.deadline,
                      evidence=[e.model_dump(mode="json") for e in f.evidence],
                      closed_at=f.closed_at)


def project(state: TaskState) -> ReadModel:
    """The task's whole read model."""
    return ReadModel(task=_task_row(state),
                     inspections=[_inspection_row(state, i) for i in state.inspections],
                     findings=[_finding_row(state, f) for f in state.findings])


def touched_rows(event: Event) -> tuple[frozenset[str], frozenset[str]]:
    """The inspection ids and finding ids whose rows `event` can change (the task row aside).

    Every event that changes an inspection or a finding names it, so a batch's changed rows
    follow from its events alone; tests check this against the whole projection."""
    match event:
        case InspectionRecorded():
            return (frozenset({event.inspection_id}),
                    frozenset(f.finding_id for f in event.findings))
        case RecheckRecorded():
            return frozenset({f"recheck-{event.seq}"}), frozenset()  # the id evolve gives it
        case RectificationOrdered() | RectificationReported() | RectificationVerified():
            return frozenset(), frozenset({event.finding_id})
        case EscalationFired(target_kind="finding"):
            return frozenset(), frozenset({event.target})
        case _:
            return frozenset(), frozenset()


def project_batch(state: TaskState, batch: Iterable[Event]) -> ReadModel:
    """The read model a batch of events needs recorded with it: the task row and the rows its
    events changed, at `state` (the state right after the batch's last event)."""
    inspections: set[str] = set()
    findings: set[str] = set()
    for event in batch:
        i, f = touched_rows(event)
        inspections |= i
        findings |= f
    return project_changed(state, inspections, findings)


def project_changed(state: TaskState, inspection_ids: Iterable[str],
                    finding_ids: Iterable[str]) -> ReadModel:
    """The task row and the named inspection and finding rows only (`partial`)."""
    wanted_i, wanted_f = set(inspection_ids), set(finding_ids)
    return ReadModel(
        task=_task_row(state),
        inspections=[_inspection_row(state, i) for i in state.inspections
                     if i.inspection_id in wanted_i],
        findings=[_finding_row(state, f) for f in state.findings if f.finding_id in wanted_f],
        partial=True,
    )


class NoticeContext(Row):
    """What a 督办单 needs besides the rung itself: names people read."""

    task_id: str
    step_key: str
    plan_title: str
    task_title: str
    unit_code: str
    unit_name: str
    lead_unit_name: str
    timezone: str
    target_title: str
    # Earlier notices of this task recorded as missing their 反馈时限 (逾期未签收或反馈), by
    # step key, as the new notice names them.
    missed_replies: tuple[str, ...] = ()


class RecordBatch(Row):
    """One activity call: append these events, update the read model, issue these notices."""

    task_id: str
    events: list[dict[str, Any]]
    read_model: ReadModel
    notices: list[NoticeContext] = []


def notice_context(state: TaskState, fired: EscalationFired) -> NoticeContext:
    spec = state.spec
    if fired.target_kind == "finding":
        f = state.finding(fired.target)
        target_title = f"整改事项 {fired.target}: {f.description}" if f else fired.target
    else:
        n = state.node(fired.target)
        title = n.title if n else fired.target
        target_title = f"虚报: {title}" if fired.target_kind == "false_report" else title
    return NoticeContext(
        task_id=spec.task_id, step_key=fired.step_key, plan_title=spec.plan_title, task_title=spec.title,
        unit_code=spec.unit.code, unit_name=spec.unit.name, lead_unit_name=spec.lead_unit.name,
        timezone=spec.timezone, target_title=target_title,
        missed_replies=tuple(n.step_key for n in state.notices
                             if n.missed_at is not None and n.missed_at <= fired.at),
    )
