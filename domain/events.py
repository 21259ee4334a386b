"""Domain events: every fact about a task, with its per-task sequence, time and actor.

Events are the record an auditor replays years later, so they are self-describing, never hold
floats (they are hashed as canonical JSON), and are only ever added to, never changed.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from domain.ladder import Recipient, Severity
from domain.plan import TaskSpec

SYSTEM = "system"
Outcome = Literal["达标", "基本达标", "不达标"]
Light = Literal["green", "yellow", "red"]


class Evidence(BaseModel):
    """A photo or file by its SHA-256, optionally with a geo point ("lat,lon" as text: no floats)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = ""
    geo: str | None = Field(None, pattern=r"^-?\d{1,3}(\.\d+)?,-?\d{1,3}(\.\d+)?$")


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    finding_id: str
    severity: Severity
    description: str
    node: str | None = None
    evidence: tuple[Evidence, ...] = ()


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    task_id: str
    seq: int = Field(ge=1)
    at: dt.datetime
    actor: str
    v: int = 1


class TaskAssigned(Event):
    type: Literal["TaskAssigned"] = "TaskAssigned"
    spec: TaskSpec


class Acknowledged(Event):
    """签收."""

    type: Literal["Acknowledged"] = "Acknowledged"
    note: str = ""


class ProgressReported(Event):
    """进度反馈."""

    type: Literal["ProgressReported"] = "ProgressReported"
    percent: int
    note: str = ""
    meets_report_node: str | None = None


class NodeClaimed(Event):
    """申请销号: a claim, not yet a completion."""

    type: Literal["NodeClaimed"] = "NodeClaimed"
    node: str
    note: str = ""
    evidence: tuple[Evidence, ...] = ()


class ClaimRejected(Event):
    type: Literal["ClaimRejected"] = "ClaimRejected"
    node: str
    reason: str


class NodeAccepted(Event):
    """验收: the node is closed by a supervisor's acceptance or a passing inspection."""

    type: Literal["NodeAccepted"] = "NodeAccepted"
    node: str
    via: Literal["acceptance", "inspection"]
    inspection_id: str | None = None
    claimed_at: dt.datetime
    on_time: bool
    note: str = ""


class ExtensionRequested(Event):
    """申请延期."""

    type: Literal["ExtensionRequested"] = "ExtensionRequested"
    node: str
    reason: str
    current_due: dt.datetime
    proposed_due: dt.datetime


class ExtensionDecided(Event):
    type: Literal["ExtensionDecided"] = "ExtensionDecided"
    node: str
    approved: bool
    reason: str = ""
    original_due: dt.datetime
    previous_due: dt.datetime
    granted_due: dt.datetime | None = None


class InspectionRecorded(Event):
    """四不两直 visit: inspector, place, time of the visit, outcome, findings (问题清单)."""

    type: Literal["InspectionRecorded"] = "InspectionRecorded"
    inspection_id: str
    inspector: str
    visited_at: dt.datetime
    place: str
    nodes: tuple[str, ...] = ()
    outcome: Outcome
    findings: tuple[Finding, ...] = ()
    recheck: bool = False


class RectificationOrdered(Event):
    """整改通知: each finding gets its own deadline and ladder."""

    type: Literal["RectificationOrdered"] = "RectificationOrdered"
    finding_id: str
    severity: Severity
    deadline: dt.datetime


class RectificationReported(Event):
    type: Literal["RectificationReported"] = "RectificationReported"
    finding_id: str
    note: str = ""
    evidence: tuple[Evidence, ...] = ()


class RectificationVerified(Event):
    """销号 on pass; sent back to the unit otherwise."""

    type: Literal["RectificationVerified"] = "RectificationVerified"
    finding_id: str
    passed: bool
    note: str = ""


class FalseReportFound(Event):
    """虚报: a node claimed done that an inspection found not done."""

    type: Literal["FalseReportFound"] = "FalseReportFound"
    node: str
    inspection_id: str
    claimed_at: dt.datetime | None


class NodeReopened(Event):
    type: Literal["NodeReopened"] = "NodeReopened"
    node: str
    reason: str
    new_due: dt.datetime


class EscalationFired(Event):
    """A ladder rung that fired: what the rules required, and when they required it."""

    type: Literal["EscalationFired"] = "EscalationFired"
    step_key: str
    target_kind: Literal["node", "finding", "false_report"]
    target: str
    ladder: str
    step: str
    title: str
    level: int
    action: Literal["notify", "notice"]
    recipients: tuple[Recipient, ...]
    demand: str
    due_since: dt.datetime
    required_at: dt.datetime
    reply_by: dt.datetime | None = None
    calendar_estimated: tuple[int, ...] = ()


class LightChanged(Event):
    type: Literal["LightChanged"] = "LightChanged"
    previous: Light
    light: Light
    reasons: tuple[str, ...] = ()


class TaskCompleted(Event):
    type: Literal["TaskCompleted"] = "TaskCompleted"
    on_time: bool


class RecheckScheduled(Event):
    """回头看 drawn: a re-inspection is due some weeks after completion."""

    type: Literal["RecheckScheduled"] = "RecheckScheduled"
    due_at: dt.datetime
    until: dt.datetime
    draw: int


class RecheckRecorded(Event):
    type: Literal["RecheckRecorded"] = "RecheckRecorded"
    inspector: str
    visited_at: dt.datetime
    passed: bool
    nodes: tuple[str, ...] = ()
    note: str = ""


class TaskClosed(Event):
    type: Literal["TaskClosed"] = "TaskClosed"
    reason: str


class CommandRejected(Event):
    """A malformed, disallowed or unauthorised command: who tried what, and why it was refused."""

    type: Literal["CommandRejected"] = "CommandRejected"
    command: str
    code: str
    reason: str
    payload_excerpt: str = ""


AnyEvent = Annotated[
    TaskAssigned | Acknowledged | ProgressReported | NodeClaimed | ClaimRejected | NodeAccepted
    | ExtensionRequested | ExtensionDecided | InspectionRecorded | RectificationOrdered
    | RectificationReported | RectificationVerified | FalseReportFound | NodeReopened
    | EscalationFired | LightChanged | TaskCompleted | RecheckScheduled | RecheckRecorded
    | TaskClosed | CommandRejected,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
EVENT_LIST_ADAPTER: TypeAdapter[list[AnyEvent]] = TypeAdapter(list[AnyEvent])


def parse_event(data: object) -> AnyEvent:
    return EVENT_ADAPTER.validate_python(data)


def event_json(event: Event) -> dict[str, object]:
    """The exact JSON form stored and hashed."""
    return event.model_dump(mode="json")
