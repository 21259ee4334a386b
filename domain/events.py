"""Domain events: every fact about a task, with its per-task sequence, time and actor.

Events are the record an auditor replays years later, so they are self-describing, never hold
floats (they are hashed as canonical JSON), and are only ever added to, never changed.

Schema evolution. Each event carries `v`, the version of its type's schema it was written
with. Stored events are never rewritten (the hash chain covers their stored bytes); they are
brought to the current schema when read (`parse_event`), by upcasters registered per
(type, version):
- adding an optional field needs no new version: declare it with `domain.schema.added()`, so it
  is left out of the JSON while absent and old and new records of the same fact stay identical;
- renaming, removing or re-meaning a field bumps the type's `v` default and registers an
  upcaster from the previous version (`@upcaster("Type", 1)`), which turns a stored v1 payload
  into a valid v2 one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from domain.calendar import Calendar
from domain.ladder import Recipient, Severity
from domain.plan import TaskSpec
from domain.schema import Record, added

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


class ActorProof(Record):
    """How the actor of a command was proven (身份核验), recorded with the events it caused.

    - "signed": a trusted sender (e.g. the web app, for its signed-in user) signed an assertion
      of who sends what; `sender` names its key, `key` is the key's fingerprint and `assertion`
      the signature's digest (so an auditor can match it against the sender's log).
    - "self_asserted": no signature, and the deployment allows that (the dev demo): the actor
      is only what the payload claims."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["signed", "self_asserted"]
    # Left out of the record while absent (a self-asserted proof is just its method).
    sender: str | None = added()
    key: str | None = added()
    assertion: str | None = added()
    signed_at: dt.datetime | None = added()


class Event(Record):
    model_config = ConfigDict(extra="forbid", frozen=True)
    task_id: str
    seq: int = Field(ge=1)
    at: dt.datetime
    actor: str
    v: int = 1  # the schema version of this event's type it was written with
    # How the actor was proven, on events caused by a command (added with signed commands).
    proof: ActorProof | None = added()


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


class NoticeSignedFor(Event):
    """签收: the responsible unit signs for a notice it received (a 督办单 or a reminder)."""

    type: Literal["NoticeSignedFor"] = "NoticeSignedFor"
    step_key: str
    note: str = ""


class NoticeReplyMissed(Event):
    """逾期未反馈: a notice neither signed for nor answered (no report by the unit since it was
    issued) by its 反馈时限; recorded at that instant by the clock, and named in the next
    rung's notice."""

    type: Literal["NoticeReplyMissed"] = "NoticeReplyMissed"
    step_key: str
    issued_at: dt.datetime
    reply_by: dt.datetime


class LightChanged(Event):
    type: Literal["LightChanged"] = "LightChanged"
    previous: Light
    light: Light
    reasons: tuple[str, ...] = ()


class TaskCompleted(Event):
    type: Literal["TaskCompleted"] = "TaskCompleted"
    on_time: bool


class RecheckScheduled(Event):
    """回头看 drawn: a re-inspection is due some weeks after completion.

    `draw` (0–99) < the plan's percentage drew the task. `draw_basis` is the text it was
    derived from (sha256 of it, as an integer, mod 100), so an auditor recomputes it; absent
    in events of tasks that drew from the engine's randomness before draws were derived."""

    type: Literal["RecheckScheduled"] = "RecheckScheduled"
    due_at: dt.datetime
    until: dt.datetime
    draw: int
    draw_basis: str | None = added()


class RecheckRecorded(Event):
    type: Literal["RecheckRecorded"] = "RecheckRecorded"
    inspector: str
    visited_at: dt.datetime
    passed: bool
    nodes: tuple[str, ...] = ()
    note: str = ""


class TaskClosed(Event):
    """销号 of the whole task; when closed straight after completion (not drawn for 回头看), the
    draw that decided it and its basis (see `RecheckScheduled`)."""

    type: Literal["TaskClosed"] = "TaskClosed"
    reason: str
    draw: int | None = added()
    draw_basis: str | None = added()


class CalendarUpdated(Event):
    """A newer working-day calendar for a running task (e.g. next year's State Council notice
    published), sent by the office: from this event on, rungs and deadlines not yet fired
    count working days on `calendar`. Node due times already fixed do not move."""

    type: Literal["CalendarUpdated"] = "CalendarUpdated"
    previous_fingerprint: str
    calendar: Calendar
    newly_published: tuple[int, ...] = ()
    changed_years: tuple[int, ...] = ()
    note: str = ""


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
    | TaskClosed | CommandRejected | CalendarUpdated | NoticeSignedFor | NoticeReplyMissed,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
EVENT_LIST_ADAPTER: TypeAdapter[list[AnyEvent]] = TypeAdapter(list[AnyEvent])

# The class that reads each event type now (its `v` default is the current schema version).
EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in AnyEvent.__origin__.__args__  # type: ignore[attr-defined]
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, version) -> turns a payload of that version into one of the next version.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def current_version(type_name: str) -> int:
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise ValueError(f"unknown event type {type_name!r}")
    version = cls.model_fields["v"].default
    assert isinstance(version, int)
    return version


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register `fn` to bring a `type_name` payload from `from_version` to the next version."""

    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(type_name, from_version)] = fn
        return fn

    return register


def upcast(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event payload brought to its type's current schema (a new dict; the stored
    one, and its hashed bytes, are left as they are)."""
    out = dict(data)
    type_name = out.get("type")
    if not isinstance(type_name, str):
        raise ValueError(f"event has no type: {str(dict(data))[:120]}")
    target = current_version(type_name)
    version = out.get("v", 1)
    if type(version) is not int or version < 1:
        raise ValueError(f"{type_name} event has an invalid schema version {version!r}")
    if version > target:
        raise ValueError(f"{type_name} event v{version} was written by a newer version of "
                         f"Duban (this one reads up to v{target})")
    while version < target:
        step = UPCASTERS.get((type_name, version))
        if step is None:
            raise ValueError(f"no upcaster for {type_name} v{version} -> v{version + 1}")
        out = step(dict(out))
        version += 1
        out["v"] = version
    return out


def parse_event(data: object) -> Event:
    """A stored or sent event payload as the current event model (upcast first)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"an event is a JSON object, not {type(data).__name__}")
    current = upcast(data)
    return EVENT_TYPES[current["type"]].model_validate(current)


def event_json(event: Event) -> dict[str, object]:
    """The exact JSON form stored and hashed."""
    return event.model_dump(mode="json")
