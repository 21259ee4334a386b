"""The key-task breakdown list (重点任务分解清单) and its resolution into one task per unit.

A plan names its units (单位), its roster (who belongs where, who supervises, leads, audits),
and its key tasks (重点任务) with lead unit (牵头单位), responsible units (责任单位) and deadline
nodes (节点) planned backwards from the final deadline (倒排工期). `resolve_plan` turns it into
`TaskSpec`s — the input of one KeyTask workflow per (task × responsible unit).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, field_validator

from domain.addresses import email_problem, secret_env_problem, webhook_problem
from domain.calendar import COMPAT_CALENDAR, DEFAULT_TZ, Calendar, end_of_local_day, local_date
from domain.ladder import Ladder, Offset
from domain.schema import Record, added

CODE = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"

UnitKind = Literal["county", "department", "township", "village", "community", "office"]
Role = Literal["member", "head", "lead", "supervisor", "auditor", "office", "leader", "discipline"]


# Years a task's recorded calendar reaches past the last node it names: working-day rungs and
# rectification deadlines counted from a late-December due date land in the following year(s).
CALENDAR_MARGIN_YEARS = 2


class Model(Record):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Unit(Model):
    code: str = Field(pattern=CODE)
    name: str
    kind: UnitKind
    parent: str | None = None


class Member(Model):
    """A person on the roster. Authorisation is by role and unit, never by name."""

    actor: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    name: str
    unit: str
    roles: tuple[Role, ...] = ("member",)


ADDRESS_FIELDS = ("email", "webhook", "webhook_secret_env")
_EMAIL_SPLIT = re.compile(r"[,，、;；\s]+")


class Addresses(Model):
    """Where a unit's or a roster member's 督办单 go (通讯录), besides the unit's inbox in the web
    app, which every unit has. The webhook's HMAC secret is never in the plan:
    `webhook_secret_env` names the delivery worker's environment variable that holds it."""

    email: tuple[str, ...] = ()
    webhook: str | None = None
    webhook_secret_env: str | None = None

    @field_validator("email", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # "a@x.cn, b@x.cn" as offices write it in a cell or a YAML scalar.
        if isinstance(value, str):
            return tuple(x for x in _EMAIL_SPLIT.split(value) if x)
        return value

    @property
    def empty(self) -> bool:
        return not self.email and self.webhook is None and self.webhook_secret_env is None


class Directory(Model):
    """The plan's 通讯录: addresses by unit code and by roster actor. Kept beside the units and
    the roster, not in them: `Unit` and `Member` are recorded in every `TaskSpec`, and an
    address changes more often than the rules a task was assigned under (a new plan load
    stores the new directory; the tasks' records stay as they were)."""

    units: dict[str, Addresses] = Field(default_factory=dict)
    members: dict[str, Addresses] = Field(default_factory=dict)


class NodeSpec(Model):
    """A deadline node: a local date ("X月31日前" = end of that day), an exact instant, or
    working days after the plan's start or after an earlier node."""

    code: str = Field(pattern=CODE)
    title: str
    kind: Literal["milestone", "report"] = "milestone"
    due: dt.date | None = None
    due_at: dt.datetime | None = None
    working_days: int | None = Field(None, ge=0)
    after: str | None = None
    planned_progress: int = Field(0, ge=0, le=100)


class TaskDef(Model):
    code: str = Field(pattern=CODE)
    title: str
    category: str = ""
    lead_unit: str
    standard: str = ""
    ladder: str = "deadline-lights"
    major: bool = False
    start_level: int | None = Field(None, ge=1)
    responsible: tuple[str, ...] = ()
    responsible_kind: UnitKind | None = None
    end: dt.date | None = None
    nodes: tuple[NodeSpec, ...] = ()


class RecheckPolicy(Model):
    """回头看: the share of closed tasks drawn for a re-inspection, and when.

    Whether a completed task is drawn is recomputable from its record: see
    `domain.decide.recheck_draw` (the task, its completion event, and `seed`)."""

    percent: int = Field(20, ge=0, le=100)
    after: dict[str, int] = Field(default_factory=lambda: {"days": 28})
    window: dict[str, int] = Field(default_factory=lambda: {"days": 14})
    # Set by the office, so that a unit cannot work out in advance which completion time would
    # escape the draw; absent, the plan code stands in.
    seed: str | None = added(None, max_length=200)


class Plan(Model):
    code: str = Field(pattern=CODE)
    title: str
    timezone: str = DEFAULT_TZ
    start: dt.date
    start_at: dt.datetime | None = None
    units: tuple[Unit, ...]
    roster: tuple[Member, ...] = ()
    tasks: tuple[TaskDef, ...]
    recheck: RecheckPolicy = RecheckPolicy()
    directory: Directory = Directory()


class ResolvedNode(Model):
    code: str
    title: str
    kind: Literal["milestone", "report"]
    due: dt.datetime
    planned_progress: int
    calendar_estimated: tuple[int, ...] = ()


class TaskSpec(Model):
    """Everything one KeyTask workflow needs, frozen at plan load: the audit's "rules in force"."""

    task_id: str
    plan_code: str
    plan_title: str
    task_code: str
    title: str
    category: str
    standard: str
    timezone: str
    unit: Unit
    parent_unit: Unit | None
    lead_unit: Unit
    major: bool
    start_level: int | None
    started_at: dt.datetime
    nodes: tuple[ResolvedNode, ...]
    ladders: dict[str, Ladder]
    ladder: str
    roster: tuple[Member, ...]
    recheck: RecheckPolicy
    # The working days this task counts with (recorded at plan load); absent in specs recorded
    # before calendars were, which keep the repository's frozen table.
    calendar: Calendar | None = added()

    @property
    def working_calendar(self) -> Calendar:
        return self.calendar if self.calendar is not None else COMPAT_CALENDAR


class PlanIssue(Model):
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class PlanInvalid(ValueError):
    def __init__(self, issues: list[PlanIssue]):
        self.issues = issues
        super().__init__("plan is invalid:\n" + "\n".join(f"  - {i}" for i in issues))


def task_id_for(plan_code: str, task_code: str, unit_code: str) -> str:
    return f"{plan_code}/{task_code}/{unit_code}"


def _dupes(codes: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({c for c in codes if c in seen or seen.add(c)})  # type: ignore[func-returns-value]


def validate_plan(plan: Plan, ladders: dict[str, Ladder]) -> list[PlanIssue]:
    """Every problem at once, each with where it is, so an office can fix a sheet in one pass."""
    issues: list[PlanIssue] = []

    def bad(where: str, msg: str) -> None:
        issues.append(PlanIssue(where=where, message=msg))

    try:
        ZoneInfo(plan.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        bad("timezone", f"unknown time zone {plan.timezone!r}")
    units = {u.code: u for u in plan.units}
    for c in _dupes([u.code for u in plan.units]):
        bad(f"units.{c}", "duplicate unit code")
    for u in plan.units:
        if u.parent is not None and u.parent not in units:
            bad(f"units.{u.code}", f"unknown parent unit {u.parent!r}")
        seen_chain, cur = {u.code}, u.parent
        while cur is not None and cur in units:
            if cur in seen_chain:
                bad(f"units.{u.code}", "parent units form a cycle")
                break
            seen_chain.add(cur)
            cur = units[cur].parent
    for c in _dupes([m.actor for m in plan.roster]):
        bad(f"roster.{c}", "duplicate actor")
    for m in plan.roster:
        if m.unit not in units:
            bad(f"roster.{m.actor}", f"unknown unit {m.unit!r}")
    for c in _dupes([t.code for t in plan.tasks]):
        bad(f"tasks.{c}", "duplicate task code")
    for t in plan.tasks:
        where = f"tasks.{t.code}"
        if t.lead_unit not in units:
            bad(where, f"unknown lead unit {t.lead_unit!r}")
        for r in t.responsible:
            if r not in units:
                bad(where, f"unknown responsible unit {r!r}")
        for c in _dupes(list(t.responsible)):
            bad(where, f"responsible unit {c!r} listed twice")
        if t.responsible and t.responsible_kind is not None:
            bad(where, "give either `responsible` (unit codes) or `responsible_kind`, not both")
        elif not t.responsible and t.responsible_kind is None:
            bad(where, "no responsible units (give `responsible` or `responsible_kind`)")
        elif t.responsible_kind is not None and not _responsible_units(plan, t):
            bad(where, f"no unit of kind {t.responsible_kind!r}")
        if t.ladder not in ladders:
            bad(where, f"ladder {t.ladder!r} not found (known: {', '.join(sorted(ladders))})")
        else:
            lad = ladders[t.ladder]
            for extra in (lad.rectification_ladder, lad.false_report_ladder):
                if extra not in ladders:
                    bad(where, f"ladder {t.ladder!r} needs ladder {extra!r}, not found")
            if t.start_level is not None and not any(s.level >= t.start_level for s in lad.steps):
                bad(where, f"ladder {t.ladder!r} has no step at level {t.start_level} or above")
            if not t.nodes and not lad.obligations:
                bad(where, "no deadline nodes, and its ladder imposes none")
        for c in _dupes([n.code for n in t.nodes]):
            bad(f"{where}.nodes.{c}", "duplicate node code")
        earlier: set[str] = set()
        for n in t.nodes:
            nw = f"{where}.nodes.{n.code}"
            given = sum(x is not None for x in (n.due, n.due_at, n.working_days))
            if given != 1:
                bad(nw, "give exactly one of `due` (date), `due_at` (instant), `working_days`")
            if n.after is not None and n.working_days is None:
                bad(nw, "`after` only goes with `working_days`")
            if n.after not in (None, "start") and n.after not in earlier:
                bad(nw, f"`after` must name an earlier node of this task, not {n.after!r}")
            if n.due_at is not None and n.due_at.tzinfo is None:
                bad(nw, "`due_at` needs a time zone offset")
            if t.end is not None and n.due is not None and n.due > t.end:
                bad(nw, f"node due {n.due} is after the task's end {t.end}")
            if t.end is not None and n.due_at is not None and n.due_at.tzinfo is not None \
                    and n.due_at > end_of_local_day(t.end, plan.timezone):
                bad(nw, f"node due {n.due_at.isoformat()} is after the task's end {t.end}")
            if n.due is not None and n.due < plan.start:
                bad(nw, f"node due {n.due} is before the plan's start {plan.start}")
            earlier.add(n.code)
        progress = [n.planned_progress for n in t.nodes]
        if progress != sorted(progress):
            bad(where, "planned progress must not go down from node to node")
    if plan.start_at is not None and plan.start_at.tzinfo is None:
        issues.append(PlanIssue(where="start_at", message="needs a time zone offset"))
    issues.extend(_directory_issues(plan))
    return issues


def _directory_issues(plan: Plan) -> list[PlanIssue]:
    """Bad delivery addresses, each located at its unit's or member's entry and field."""
    issues: list[PlanIssue] = []
    units = {u.code for u in plan.units}
    actors = {m.actor for m in plan.roster}
    for section, known, owners in (("units", units, plan.directory.units),
                                   ("roster", actors, plan.directory.members)):
        for code, a in owners.items():
            where = f"{section}.{code}"
            if code not in known:
                what = "unit" if section == "units" else "roster member"
                issues.append(PlanIssue(where=f"directory.{section}.{code}",
                                        message=f"addresses for an unknown {what} {code!r}"))
            for address in a.email:
                problem = email_problem(address)
                if problem:
                    issues.append(PlanIssue(where=f"{where}.email", message=problem))
            for dupe in _dupes(list(a.email)):
                issues.append(PlanIssue(where=f"{where}.email",
                                        message=f"e-mail address {dupe!r} listed twice"))
            if a.webhook is not None:
                problem = webhook_problem(a.webhook)
                if problem:
                    issues.append(PlanIssue(where=f"{where}.webhook", message=problem))
                if a.webhook_secret_env is None:
                    issues.append(PlanIssue(where=f"{where}.webhook_secret_env", message=(
                        "a webhook needs webhook_secret_env: the name of the environment "
                        "variable holding its signing secret")))
            if a.webhook_secret_env is not None:
                problem = secret_env_problem(a.webhook_secret_env)
                if problem:
                    issues.append(PlanIssue(where=f"{where}.webhook_secret_env",
                                            message=problem))
                if a.webhook is None:
                    issues.append(PlanIssue(where=f"{where}.webhook_secret_env",
                                            message="webhook_secret_env without a webhook"))
    return issues


def _responsible_units(plan: Plan, t: TaskDef) -> list[Unit]:
    units = {u.code: u for u in plan.units}
    if t.responsible:
        return [units[c] for c in t.responsible if c in units]
    return [u for u in plan.units if u.kind == t.responsible_kind]


def _resolve_nodes(plan: Plan, t: TaskDef, ladder: Ladder, started: dt.datetime,
                   calendar: Calendar) -> tuple[ResolvedNode, ...]:
    tz = plan.timezone
    out: dict[str, ResolvedNode] = {}
    if t.nodes:
        for n in t.nodes:
            est: tuple[int, ...] = ()
            if n.due is not None:
                due = end_of_local_day(n.due, tz)
            elif n.due_at is not None:
                due = n.due_at.astimezone(dt.UTC)
            else:
                anchor_day = plan.start if n.after in (None, "start") else None
                if anchor_day is None:
                    prev = out[str(n.after)]
                    due, est = Offset(working_days=n.working_days or 0).after(prev.due, tz,
                                                                              calendar)
                else:
                    res = calendar.add_working_days(anchor_day, n.working_days or 0)
                    due, est = end_of_local_day(res.day, tz), res.estimated_years
            out[n.code] = ResolvedNode(
                code=n.code, title=n.title, kind=n.kind, due=due,
                planned_progress=n.planned_progress, calendar_estimated=est,
            )
        return tuple(out.values())
    nodes = []
    for ob in ladder.obligations:
        within = ob.major_within if (t.major and ob.major_within is not None) else ob.within
        due, est = within.after(started, tz, calendar)
        nodes.append(ResolvedNode(
            code=ob.code, title=ob.title, kind=ob.kind, due=due,
            planned_progress=ob.planned_progress, calendar_estimated=est,
        ))
    return tuple(nodes)


def _roster_for(plan: Plan, unit: Unit, lead: Unit) -> tuple[Member, ...]:
    """The people who may act on one task: its unit, its lead unit, and plan-wide roles."""
    wide = {"supervisor", "auditor", "office", "leader", "discipline"}
    return tuple(
        m for m in plan.roster
        if m.unit in (unit.code, lead.code) or wide.intersection(m.roles)
    )


def resolve_plan(plan: Plan, ladders: dict[str, Ladder],
                 calendar: Calendar | None = None) -> list[TaskSpec]:
    """One `TaskSpec` per (task × responsible unit), working days counted on `calendar`; each
    spec records the calendar's days for the years it spans (from its start to its last node,
    plus `CALENDAR_MARGIN_YEARS`). Without a calendar the specs record none and count on the
    repository's frozen table (as specs did before calendars were recorded)."""
    issues = validate_plan(plan, ladders)
    if calendar is not None and not calendar.covers(plan.start.year):
        issues.append(PlanIssue(where="calendar", message=(
            f"the working-day calendar {calendar.label} does not cover the plan's start "
            f"{plan.start}")))
    if issues:
        raise PlanInvalid(issues)
    counting = calendar if calendar is not None else COMPAT_CALENDAR
    units = {u.code: u for u in plan.units}
    started = (
        plan.start_at.astimezone(dt.UTC) if plan.start_at is not None
        else end_of_local_day(plan.start - dt.timedelta(days=1), plan.timezone)
    )
    specs: list[TaskSpec] = []
    for t in plan.tasks:
        ladder = ladders[t.ladder]
        needed = {t.ladder, ladder.rectification_ladder, ladder.false_report_ladder}
        used = {k: ladders[k] for k in sorted(needed)}
        lead = units[t.lead_unit]
        for unit in _responsible_units(plan, t):
            nodes = _resolve_nodes(plan, t, ladder, started, counting)
            recorded = None
            if calendar is not None:
                first = local_date(started, plan.timezone).year
                last = max([first, *(local_date(n.due, plan.timezone).year for n in nodes)])
                recorded = calendar.restricted(first, last + CALENDAR_MARGIN_YEARS)
            specs.append(TaskSpec(
                task_id=task_id_for(plan.code, t.code, unit.code),
                plan_code=plan.code, plan_title=plan.title, task_code=t.code, title=t.title,
                category=t.category, standard=t.standard, timezone=plan.timezone, unit=unit,
                parent_unit=units.get(unit.parent) if unit.parent else None, lead_unit=lead,
                major=t.major, start_level=t.start_level, started_at=started, nodes=nodes,
                ladders=used, ladder=t.ladder, roster=_roster_for(plan, unit, lead),
                recheck=plan.recheck, calendar=recorded,
            ))
    return specs


def estimated_calendar_years(specs: list[TaskSpec]) -> list[int]:
    """Years used whose official holiday notice is not in the task's calendar: flag them.

    Counts node dates computed in working days, and the years of node dues whose ladders count
    their rungs in working days (those rungs land in that year or later)."""
    years = {y for s in specs for n in s.nodes for y in n.calendar_estimated}
    for s in specs:
        cal = s.working_calendar
        if any(st.after.working_days for lad in s.ladders.values() for st in lad.steps):
            years |= {y for n in s.nodes
                      if not cal.is_published(y := local_date(n.due, s.timezone).year)}
    return sorted(years)
