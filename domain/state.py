"""A task's state: what the fold of its events gives. Nothing here is stored; it is rebuilt."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict

from domain.events import Evidence, Light
from domain.ladder import Severity
from domain.plan import TaskSpec

Status = Literal["assigned", "acknowledged", "in_progress", "completed", "closed"]


class S(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PendingExtension(S):
    requested_at: dt.datetime
    requested_by: str
    proposed_due: dt.datetime
    reason: str


class NodeState(S):
    code: str
    title: str
    kind: Literal["milestone", "report"]
    original_due: dt.datetime
    due: dt.datetime
    cycle: int = 0  # bumps when the due time moves, so each cycle's rungs fire at most once
    planned_progress: int
    status: Literal["open", "claimed", "done"] = "open"
    claimed_at: dt.datetime | None = None
    claimed_by: str | None = None
    done_at: dt.datetime | None = None
    on_time: bool | None = None
    pending_extension: PendingExtension | None = None
    extensions_granted: int = 0
    fired: tuple[str, ...] = ()
    false_report_at: dt.datetime | None = None
    false_fired: tuple[str, ...] = ()
    false_cycle: int = 0  # bumps with each 虚报 found, so its rungs fire once per finding


class FindingState(S):
    finding_id: str
    inspection_id: str
    node: str | None
    severity: Severity
    description: str
    evidence: tuple[Evidence, ...] = ()
    deadline: dt.datetime | None = None
    status: Literal["open", "reported", "closed"] = "open"
    reported_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None
    sent_back: int = 0
    fired: tuple[str, ...] = ()


class InspectionState(S):
    inspection_id: str
    inspector: str
    visited_at: dt.datetime
    place: str
    outcome: str
    nodes: tuple[str, ...]
    findings: tuple[str, ...]
    recheck: bool = False


class NoticeState(S):
    """A rung that fired (a 督办单 or a reminder) as its recipient unit answers it: signed for
    (签收), answered by a report, or recorded as missing its 反馈时限."""

    step_key: str
    action: Literal["notify", "notice"]
    issued_at: dt.datetime
    reply_by: dt.datetime | None = None
    signed_at: dt.datetime | None = None
    signed_by: str | None = None
    answered_at: dt.datetime | None = None  # the unit's first report after it was issued
    missed_at: dt.datetime | None = None

    @property
    def awaiting_reply(self) -> bool:
        """Its 反馈时限 may still be missed: neither signed for, answered nor recorded missed."""
        return (self.reply_by is not None and self.signed_at is None
                and self.answered_at is None and self.missed_at is None)


class TaskState(S):
    spec: TaskSpec
    last_seq: int
    last_at: dt.datetime | None = None
    status: Status = "assigned"
    acknowledged_at: dt.datetime | None = None
    progress: int = 0
    progress_at: dt.datetime | None = None
    nodes: tuple[NodeState, ...]
    findings: tuple[FindingState, ...] = ()
    inspections: tuple[InspectionState, ...] = ()
    light: Light = "green"
    level: int = 0
    completed_at: dt.datetime | None = None
    recheck_due: dt.datetime | None = None
    recheck_until: dt.datetime | None = None
    closed_at: dt.datetime | None = None
    false_reports: int = 0
    rejected_commands: int = 0
    escalations: int = 0
    notices: tuple[NoticeState, ...] = ()
    missed_replies: int = 0

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    def node(self, code: str) -> NodeState | None:
        return next((n for n in self.nodes if n.code == code), None)

    def notice(self, step_key: str) -> NoticeState | None:
        return next((n for n in self.notices if n.step_key == step_key), None)

    def finding(self, fid: str) -> FindingState | None:
        return next((f for f in self.findings if f.finding_id == fid), None)

    @property
    def is_active(self) -> bool:
        return self.status not in ("completed", "closed")
