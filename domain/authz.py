"""Who may do what (权限): by the plan's roster, never by a name typed into a payload.

- A responsible unit (责任单位) reports on its own task only: acknowledge, progress, claim,
  extension requests, rectification reports, and signs for (签收) the notices it receives.
- Acceptance of a claim: a supervisor (督查组) or the lead unit (牵头单位) — never the unit itself.
- Extension decisions: the lead unit's lead/head, or a leader (区委/县委).
- Inspections, rectification verification, 回头看: supervisors not belonging to the unit.
- A newer working-day calendar: the office (督查办).
- Auditors (审计/纪委/考核办) read; they never command.
"""

from __future__ import annotations

from domain.commands import (
    AcceptNode,
    Acknowledge,
    ClaimNode,
    Command,
    DecideExtension,
    RecordInspection,
    RecordRecheck,
    RejectClaim,
    Rejection,
    ReportProgress,
    ReportRectification,
    RequestExtension,
    SignNotice,
    UpdateCalendar,
    VerifyRectification,
)
from domain.plan import Member, TaskSpec

UNIT_COMMANDS = (Acknowledge, ReportProgress, ClaimNode, RequestExtension, ReportRectification,
                 SignNotice)
ACCEPT_COMMANDS = (AcceptNode, RejectClaim)
SUPERVISOR_COMMANDS = (RecordInspection, VerifyRectification, RecordRecheck)


def member_of(spec: TaskSpec, actor: str) -> Member | None:
    return next((m for m in spec.roster if m.actor == actor), None)


def _who(spec: TaskSpec, m: Member) -> str:
    """What the actor has: its unit (marked if it is the lead unit) and its roles."""
    lead = " (the lead unit)" if m.unit == spec.lead_unit.code else ""
    return f"{m.actor} belongs to {m.unit}{lead} as {'/'.join(m.roles)}"


def authorise(spec: TaskSpec, cmd: Command) -> Rejection | None:
    m = member_of(spec, cmd.actor)
    name = type(cmd).__name__
    if m is None:
        return Rejection(code="unauthorised",
                         reason=f"actor {cmd.actor!r} is not on this plan's roster for this task")
    roles = set(m.roles)
    own_unit = m.unit == spec.unit.code
    if isinstance(cmd, UNIT_COMMANDS):
        if own_unit and roles & {"member", "head"}:
            return None
        return Rejection(code="unauthorised",
                         reason=f"{name}: only members of {spec.unit.name} ({spec.unit.code}) may "
                                f"do this; {cmd.actor} belongs to {m.unit} as {'/'.join(m.roles)}")
    if isinstance(cmd, UpdateCalendar):
        if "office" in roles:
            return None
        return Rejection(code="unauthorised",
                         reason=f"{name}: only the office (督查办) may update a task's working-day "
                                f"calendar; {cmd.actor} is {'/'.join(m.roles)}")
    if own_unit:
        return Rejection(code="unauthorised",
                         reason=f"{name}: a unit may not check its own work; {cmd.actor} belongs "
                                f"to the responsible unit {spec.unit.code}")
    if isinstance(cmd, ACCEPT_COMMANDS):
        in_lead = m.unit == spec.lead_unit.code and bool(roles & {"lead", "head", "member"})
        if "supervisor" in roles or in_lead:
            return None
        return Rejection(code="unauthorised",
                         reason=f"{name}: only a supervisor (督查组), or the lead unit "
                                f"{spec.lead_unit.code}'s lead, head or member, may accept or "
                                f"send back a claim; {_who(spec, m)}")
    if isinstance(cmd, DecideExtension):
        if (m.unit == spec.lead_unit.code and roles & {"lead", "head"}) or "leader" in roles:
            return None
        return Rejection(code="unauthorised",
                         reason=f"{name}: only the lead unit {spec.lead_unit.code}'s lead/head or a "
                                f"leader may decide an extension; {_who(spec, m)}")
    if isinstance(cmd, SUPERVISOR_COMMANDS):
        if "supervisor" in roles:
            return None
        return Rejection(code="unauthorised",
                         reason=f"{name}: only a supervisor (督查组) may do this; {cmd.actor} is "
                                f"{'/'.join(m.roles)}")
    return Rejection(code="unauthorised", reason=f"{name}: no rule allows it")
