"""Escalation ladders (督办升级阶梯) as data.

A ladder says when a late item turns yellow, and which steps follow once it is overdue:
e.g. 催办 → 督办单 → 约谈 → 通报批评 → 问责. Ladders differ from place to place, so they are
configuration (`domain/ladders/*.yaml`), parsed here into frozen models. A task carries a
snapshot of its ladders in its workflow input, so an auditor sees the exact rules that applied.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.calendar import COMPAT_CALENDAR, DEFAULT_TZ, Calendar, end_of_local_day, local_date

Severity = Literal["一般", "较重", "严重"]
SEVERITIES: tuple[Severity, ...] = ("一般", "较重", "严重")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Offset(Frozen):
    """A span of time: calendar days, working days (工作日, on the official calendar), hours, minutes."""

    days: int = Field(0, ge=0)
    working_days: int = Field(0, ge=0)
    hours: int = Field(0, ge=0)
    minutes: int = Field(0, ge=0)

    def is_zero(self) -> bool:
        return not (self.days or self.working_days or self.hours or self.minutes)

    def after(self, base: dt.datetime, tz: str = DEFAULT_TZ,
              calendar: Calendar = COMPAT_CALENDAR) -> tuple[dt.datetime, tuple[int, ...]]:
        """`base` moved forward, working days counted on `calendar` (a task passes the one in
        its spec); also the years whose holiday notice `calendar` does not carry."""
        moved = base
        estimated: tuple[int, ...] = ()
        if self.working_days:
            start = local_date(base, tz)
            res = calendar.add_working_days(start, self.working_days)
            moved = base + (res.day - start)
            estimated = res.estimated_years
        moved += dt.timedelta(days=self.days, hours=self.hours, minutes=self.minutes)
        return moved, estimated

    def window_end(self, rule_time: dt.datetime, tz: str = DEFAULT_TZ,
                   calendar: Calendar = COMPAT_CALENDAR) -> tuple[dt.datetime, tuple[int, ...]]:
        """The end of a window of this length opened at `rule_time` (反馈时限): "n个工作日内"
        ends at the end (local 24:00) of the n-th working day after the rule time's local day,
        not n days after the instant; days, hours and minutes are then added as they are."""
        end = rule_time
        estimated: tuple[int, ...] = ()
        if self.working_days:
            res = calendar.add_working_days(local_date(rule_time, tz), self.working_days)
            end = end_of_local_day(res.day, tz)
            estimated = res.estimated_years
        end += dt.timedelta(days=self.days, hours=self.hours, minutes=self.minutes)
        return end, estimated

    def before(self, base: dt.datetime) -> dt.datetime:
        if self.working_days:
            raise ValueError("working days cannot be counted backwards here")
        return base - dt.timedelta(days=self.days, hours=self.hours, minutes=self.minutes)

    def label(self) -> str:
        parts = []
        if self.working_days:
            parts.append(f"{self.working_days}个工作日")
        if self.days:
            parts.append(f"{self.days}天")
        if self.hours:
            parts.append(f"{self.hours}小时")
        if self.minutes:
            parts.append(f"{self.minutes}分钟")
        return "".join(parts) or "即时"


_DEFAULT_RECTIFICATION: dict[Severity, Offset] = {
    "一般": Offset(working_days=10),
    "较重": Offset(working_days=5),
    "严重": Offset(working_days=3),
}

Recipient = Literal["unit", "unit_head", "lead", "supervisor", "leader", "discipline", "office"]


class LadderStep(Frozen):
    """One rung: fires `after` the item's due time if the item is still open."""

    code: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: str
    level: int = Field(ge=1, le=9)
    after: Offset
    action: Literal["notify", "notice"] = "notify"
    recipients: tuple[Recipient, ...] = ("unit",)
    demand: str = ""
    reply_within: Offset | None = None
    color: str | None = None


class Obligation(Frozen):
    """A node a ladder itself imposes from the task's start (e.g. the "13710" rule)."""

    code: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    title: str
    kind: Literal["milestone", "report"] = "milestone"
    within: Offset
    major_within: Offset | None = None
    planned_progress: int = Field(0, ge=0, le=100)


class Ladder(Frozen):
    code: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    title: str
    description: str = ""
    yellow_before: Offset = Offset(days=3)
    progress_yellow_behind: int = Field(10, ge=0, le=100)
    progress_red_behind: int = Field(30, ge=0, le=100)
    steps: tuple[LadderStep, ...]
    obligations: tuple[Obligation, ...] = ()
    rectification_within: dict[Severity, Offset] = Field(
        default_factory=lambda: dict(_DEFAULT_RECTIFICATION)
    )
    rectification_ladder: str = "rectification"
    false_report_ladder: str = "false-report"
    reopen_within: Offset = Offset(working_days=5)

    @model_validator(mode="after")
    def _check(self) -> Ladder:
        if not self.steps:
            raise ValueError(f"ladder {self.code!r} has no steps")
        codes = [s.code for s in self.steps]
        if len(set(codes)) != len(codes):
            raise ValueError(f"ladder {self.code!r} repeats a step code")
        levels = [s.level for s in self.steps]
        if levels != sorted(levels):
            raise ValueError(f"ladder {self.code!r}: step levels must not go down")
        if self.yellow_before.working_days:
            raise ValueError("yellow_before is counted in days/hours/minutes, not working days")
        if self.progress_yellow_behind > self.progress_red_behind:
            raise ValueError("progress_yellow_behind must not exceed progress_red_behind")
        return self

    def steps_from(self, start_level: int | None) -> tuple[LadderStep, ...]:
        """The steps a task runs: a major item may start higher (e.g. 三明: at orange or red).

        Lower rungs are skipped and the starting rung takes the first rung's offset, so the
        first notice still goes out when the item first becomes overdue.
        """
        if start_level is None or start_level <= self.steps[0].level:
            return self.steps
        kept = [s for s in self.steps if s.level >= start_level]
        if not kept:
            raise ValueError(f"ladder {self.code!r} has no step at level {start_level} or above")
        first = kept[0].model_copy(update={"after": self.steps[0].after})
        return (first, *kept[1:])


def parse_ladder(data: object) -> Ladder:
    return Ladder.model_validate(data)
