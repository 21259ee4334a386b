"""Commands people send to a task, by name, with their JSON payloads.

The same names serve as Temporal signal and update names (see docs/API.md). Payloads are
validated here, strictly (unknown keys are refused), so a typo is an error, not a silent no-op.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Set
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo

from domain.calendar import Calendar
from domain.events import Evidence, Outcome
from domain.ladder import Severity


def _lax(info: ValidationInfo) -> bool:
    """Histories recorded before fields were strict are replayed with the old coercions, so
    their decisions do not change (the workflow asks for this only on such histories)."""
    return isinstance(info.context, dict) and info.context.get("lax") is True


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"a string ({value[:20]!r})"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, int):
        return "a number"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _whole_number(value: object, info: ValidationInfo) -> object:
    """A JSON integer, nothing else: `true` is not 1 % and "50" is not 50."""
    if _lax(info) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"must be a whole number (a JSON integer), not {_json_kind(value)}")


def _boolean(value: object, info: ValidationInfo) -> object:
    """A JSON true/false, nothing else: "yes", "false", 0 and 1 are not decisions."""
    if _lax(info) or isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false (a JSON boolean), not {_json_kind(value)}")


def _instant(value: object, info: ValidationInfo) -> object:
    """An ISO 8601 text (or a datetime): a bare number is not read as seconds since 1970."""
    if _lax(info) or isinstance(value, str | dt.datetime):
        return value
    raise ValueError(f"must be an ISO 8601 date-time text, not {_json_kind(value)}")


def _date_or_instant(value: object, info: ValidationInfo) -> object:
    """"2026-12-31" is a local date (by the end of that day), not midnight of a naive time."""
    if isinstance(value, str) and len(value.strip()) == 10:
        return dt.date.fromisoformat(value.strip())
    if _lax(info) or isinstance(value, str | dt.date):
        return value
    raise ValueError(f"must be an ISO 8601 date or date-time text, not {_json_kind(value)}")


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Boolean = Annotated[bool, BeforeValidator(_boolean)]
Instant = Annotated[dt.datetime, BeforeValidator(_instant)]
DateOrInstant = Annotated[dt.datetime | dt.date, BeforeValidator(_date_or_instant)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    actor: str = Field(min_length=1, max_length=120)


class Acknowledge(Command):
    """签收."""

    note: str = Field("", max_length=2000)


class ReportProgress(Command):
    """进度反馈: whole percentage points (no floats in the record)."""

    percent: WholeNumber = Field(ge=0, le=100)
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
    approve: Boolean
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
    visited_at: Instant
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
    passed: Boolean
    note: str = Field("", max_length=4000)


class RecordRecheck(Command):
    """回头看 result."""

    visited_at: Instant
    passed: Boolean
    nodes: tuple[str, ...] = ()
    note: str = Field("", max_length=4000)


class SignNotice(Command):
    """签收督办单: the responsible unit signs for a notice, by its step key."""

    step_key: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=2000)


class UpdateCalendar(Command):
    """A newer working-day calendar for the task (the office, e.g. once next year's State
    Council notice is published): it must cover the years the task's calendar covers from its
    start, and keep every year already published."""

    calendar: Calendar
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
    "update_calendar": UpdateCalendar,
    "sign_notice": SignNotice,
}
COMMAND_NAMES: dict[type[Command], str] = {v: k for k, v in COMMANDS.items()}
# Commands added after the first release: a history recorded before one was added answered its
# name as unknown (and listed the commands known then), and replays so (see `parse_command`).
LATER_COMMANDS: frozenset[str] = frozenset({"update_calendar", "sign_notice"})
FIRST_COMMANDS: frozenset[str] = frozenset(COMMANDS) - LATER_COMMANDS
# The commands a history knew before `sign_notice` was added (calendar updates, not 签收).
CALENDAR_COMMANDS: frozenset[str] = FIRST_COMMANDS | {"update_calendar"}


class Rejection(BaseModel):
    """Why a command was refused; nothing about the task changes."""

    model_config = ConfigDict(frozen=True)
    code: Literal[
        "malformed", "unknown_command", "unauthorised", "not_allowed", "too_late", "unknown_node",
        "unknown_finding", "closed", "duplicate", "too_large", "unauthenticated", "unknown_notice",
    ]
    reason: str


# The most a command's payload may weigh, as sent (its serialised bytes). The largest command
# people send, an inspection with its findings, stays far below it; anything heavier is refused
# by size before it is decoded, so no refusal ever has to repeat it (Temporal fails a workflow
# task whose messages carry a payload over 2 MB, and an update's refusal carries its request).
MAX_COMMAND_BYTES = 256 * 1024


def size_rejection(name: str, size: int) -> Rejection | None:
    """Why a command whose payload is `size` bytes is refused, or None if it may be read."""
    if size <= MAX_COMMAND_BYTES:
        return None
    return Rejection(code="too_large", reason=(
        f"{name}: the command is {size} bytes; a command may carry at most "
        f"{MAX_COMMAND_BYTES} bytes (split it, or attach files by their SHA-256)"))


def parse_command(name: str, payload: object, *, lax: bool = False,
                  known: Set[str] | None = None) -> Command | Rejection:
    """A command from a signal/update name and its JSON payload, or why it is not one.

    Fields are strict: a JSON value of another type is refused, never coerced (`true` is not
    1 %, "yes" is not a decision). `lax=True` restores the coercions of earlier versions, only
    for replaying workflow histories recorded with them. `known` limits the command names to
    those a replayed history knew (e.g. `FIRST_COMMANDS`)."""
    names = COMMANDS.keys() if known is None else known
    model = COMMANDS.get(name) if name in names else None
    if model is None:
        return Rejection(code="unknown_command", reason=f"unknown command {name!r}; known: "
                         + ", ".join(sorted(names)))
    if not isinstance(payload, dict):
        return Rejection(code="malformed",
                         reason=f"{name}: payload must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload, context={"lax": lax})
    except ValidationError as exc:
        parts = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(x) for x in err["loc"]) or "payload"
            msg = err["msg"] if lax else err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}")
        return Rejection(code="malformed", reason=f"{name}: " + "; ".join(parts))


def actor_of(payload: object) -> str:
    """The claimed actor of a payload, for the record of a refused command."""
    if isinstance(payload, dict):
        actor = payload.get("actor")
        if isinstance(actor, str) and actor.strip():
            return actor.strip()[:120]
    return "unknown"
