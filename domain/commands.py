"""Commands people send to a task, by name, with their JSON payloads.

The same names serve as Temporal signal and update names (see docs/API.md). Payloads are
validated here, strictly (unknown keys are refused), so a typo is an error, not a silent no-op.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from domain.events import Evidence, Outcome
from domain.ladder import Severity


def _date_or_instant(value: object) -> object:
    """"2026-12-31" is a local date (by the end of that day), not midnight of a naive time."""
    if isinstance(value, str) and len(value.strip()) == 10:
        return dt.date.fromisoformat(value.strip())
    return value


DateOrInstant = Annotated[dt.datetime | dt.date, BeforeValidator(_date_or_instant)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    actor: str = Field(min_length=1, max_length=120)


class Acknowledge(Command):
    """签收."""

    note: str = Field("", max_length=2000)


class ReportProgress(Command):
    """进度反馈: whole percentage points (no floats in the record)."""

    percent: int = Field(ge=0, le=100)
    note: str = Field("", max_length=4000)


class ClaimNode(Command):
    """申请销号."""

    node: str
    note: str = Field("", max_length=4000)
    evidence: tuple[Evidence, ...] = ()


class AcceptNode(Command):
    """验收通过."""

    node: str
    note: str = Field("", max_length=4000)


class RejectClaim(Command):
    """验收不通过: the claim is sent back."""

    node: str
    reason: str = Field(min_length=1, max_length=4000)


class RequestExtension(Command):
    """申请延期: before the node's due time, with a reason and a proposed date."""

    node: str
    reason: str = Field(min_length=1, max_length=4000)
    proposed_due: DateOrInstant


class DecideExtension(Command):
    """延期审批 by the lead unit or a leader; may grant another date than proposed."""

    node: str
    approve: bool
    granted_due: DateOrInstant | None = None
    reason: str = Field("", max_length=4000)


class FindingInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    finding_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    severity: Severity
    description: str = Field(min_length=1, max_length=4000)
    node: str | None = None
    evidence: tuple[Evidence, ...] = ()


class RecordInspection(Command):
    """四不两直: the inspector is the actor."""

    inspection_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    visited_at: dt.datetime
    place: str = Field(min_length=1, max_length=500)
    nodes: tuple[str, ...] = ()
    outcome: Outcome
    findings: tuple[FindingInput, ...] = ()


class ReportRectification(Command):
    """整改反馈."""

    finding_id: str
    note: str = Field("", max_length=4000)
    evidence: tuple[Evidence, ...] = ()


class VerifyRectification(Command):
    """整改核查: 销号 when passed, sent back otherwise."""

    finding_id: str
    passed: bool
    note: str = Field("", max_length=4000)


class RecordRecheck(Command):
    """回头看 result."""

    visited_at: dt.datetime
    passed: bool
    nodes: tuple[str, ...] = ()
    note: str = Field("", max_length=4000)


COMMANDS: dict[str, type[Command]] = {
    "acknowledge": Acknowledge,
    "progress": ReportProgress,
    "claim": ClaimNode,
    "accept": AcceptNode,
    "reject_claim": RejectClaim,
    "request_extension": RequestExtension,
    "decide_extension": DecideExtension,
    "inspect": RecordInspection,
    "report_rectification": ReportRectification,
    "verify_rectification": VerifyRectification,
    "recheck": RecordRecheck,
}
COMMAND_NAMES: dict[type[Command], str] = {v: k for k, v in COMMANDS.items()}


class Rejection(BaseModel):
    """Why a command was refused; nothing about the task changes."""

    model_config = ConfigDict(frozen=True)
    code: Literal[
        "malformed", "unknown_command", "unauthorised", "not_allowed", "too_late", "unknown_node",
        "unknown_finding", "closed", "duplicate",
    ]
    reason: str


def parse_command(name: str, payload: object) -> Command | Rejection:
    """A command from a signal/update name and its JSON payload, or why it is not one."""
    model = COMMANDS.get(name)
    if model is None:
        return Rejection(code="unknown_command", reason=f"unknown command {name!r}; known: "
                         + ", ".join(sorted(COMMANDS)))
    if not isinstance(payload, dict):
        return Rejection(code="malformed",
                         reason=f"{name}: payload must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        parts = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(x) for x in err["loc"]) or "payload"
            parts.append(f"{loc}: {err['msg']}")
        return Rejection(code="malformed", reason=f"{name}: " + "; ".join(parts))


def actor_of(payload: object) -> str:
    """The claimed actor of a payload, for the record of a refused command."""
    if isinstance(payload, dict):
        actor = payload.get("actor")
        if isinstance(actor, str) and actor.strip():
            return actor.strip()[:120]
    return "unknown"
