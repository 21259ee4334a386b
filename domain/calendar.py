"""Working-day calendar (工作日) on China's official schedule, and local-time deadlines.

Working days follow the State Council's yearly holiday notice, including the adjusted working
weekends (调休). The days are a value, `Calendar`, recorded in each task's spec when its plan is
loaded (built outside the domain from the maintained `holidays` package), and passed to every
working-day computation: a running task never reads a live table, so upgrading the package
cannot change its arithmetic or its replay. A newer notice reaches a running task only through
a recorded `CalendarUpdated` event.

A year the calendar covers but whose notice was not published when it was built is *estimated*
(statutory holidays only, no 调休); a year it does not cover at all counts weekdays only. Both
are reported back to the caller (`estimated_years`) so they are flagged, never guessed silently.

Specs recorded before calendars were recorded name none; they use `COMPAT_CALENDAR`, the table
frozen into the repository (`domain/calendar_compat.py`) that those tasks ran with.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from domain import calendar_compat
from domain.canonical import canonical_json

DEFAULT_TZ = "Asia/Shanghai"
FINGERPRINT_DOMAIN = "duban/calendar/v1"


def _fingerprint(source: str, first_year: int, last_year: int, published: tuple[int, ...],
                 days_off: tuple[dt.date, ...], working_weekends: tuple[dt.date, ...]) -> str:
    """sha256 of the calendar's days (not of where they came from): two calendars with one
    fingerprint count working days identically."""
    del source  # the label is informative; the days are what the arithmetic uses
    body = {
        "first_year": first_year, "last_year": last_year, "published": list(published),
        "days_off": [d.isoformat() for d in days_off],
        "working_weekends": [d.isoformat() for d in working_weekends],
    }
    digest = hashlib.sha256(FINGERPRINT_DOMAIN.encode() + b"\x00" + canonical_json(body))
    return digest.hexdigest()


class Calendar(BaseModel):
    """The working-day calendar of a task: the days off and the adjusted working weekends (调休)
    of `first_year`..`last_year`, which of those years are officially published, where the
    table came from (`source`), and a fingerprint of the days (checked on every load, so an
    edited calendar is refused rather than silently used)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(min_length=1, max_length=200)
    first_year: int = Field(ge=1900, le=2200)
    last_year: int = Field(ge=1900, le=2200)
    published: tuple[int, ...] = ()
    days_off: tuple[dt.date, ...] = ()
    working_weekends: tuple[dt.date, ...] = ()
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")

    _off: frozenset[dt.date] = PrivateAttr(default=frozenset())
    _working: frozenset[dt.date] = PrivateAttr(default=frozenset())
    _published: frozenset[int] = PrivateAttr(default=frozenset())

    @model_validator(mode="after")
    def _check(self) -> Calendar:
        if self.first_year > self.last_year:
            raise ValueError(f"calendar years {self.first_year}..{self.last_year}: first after last")
        covered = range(self.first_year, self.last_year + 1)
        for name, days in (("days_off", self.days_off), ("working_weekends", self.working_weekends)):
            if list(days) != sorted(set(days)):
                raise ValueError(f"calendar {name} must be sorted and without repeats")
            outside = [d for d in days if d.year not in covered]
            if outside:
                raise ValueError(f"calendar {name} has {outside[0]}, outside "
                                 f"{self.first_year}–{self.last_year}")
        if any(d.weekday() < 5 for d in self.working_weekends):
            raise ValueError("a working weekend (调休) must fall on a Saturday or Sunday")
        if list(self.published) != sorted(set(self.published)) or any(
                y not in covered for y in self.published):
            raise ValueError("published years must be sorted, without repeats, and covered")
        expected = _fingerprint(self.source, self.first_year, self.last_year, self.published,
                                self.days_off, self.working_weekends)
        if self.fingerprint != expected:
            raise ValueError(f"calendar fingerprint {self.fingerprint[:12]}… does not match its "
                             f"days ({expected[:12]}…): the calendar was altered")
        return self

    def model_post_init(self, context: object, /) -> None:
        self._off = frozenset(self.days_off)
        self._working = frozenset(self.working_weekends)
        self._published = frozenset(self.published)

    @property
    def label(self) -> str:
        return f"{self.source} {self.first_year}–{self.last_year} #{self.fingerprint[:12]}"

    def covers(self, year: int) -> bool:
        return self.first_year <= year <= self.last_year

    def is_published(self, year: int) -> bool:
        """Whether the year's official notice (with its 调休 days) is in this calendar."""
        return year in self._published

    def is_working_day(self, day: dt.date) -> bool:
        """工作日: a weekday that is no holiday, or a weekend day made a working day (调休).
        In a year the calendar does not cover, every weekday (flagged as estimated)."""
        if day in self._working:
            return True
        return day.weekday() < 5 and day not in self._off

    def add_working_days(self, start: dt.date, n: int) -> WorkingDayResult:
        """The n-th working day after `start` (n >= 0; n == 0 gives `start` itself).

        "3个工作日内" counted from a date means the end of the third working day after it."""
        if n < 0:
            raise ValueError("working-day offsets must not be negative")
        day = start
        estimated: set[int] = set() if self.is_published(start.year) else {start.year}
        remaining = n
        while remaining > 0:
            day += dt.timedelta(days=1)
            if not self.is_published(day.year):
                estimated.add(day.year)
            if self.is_working_day(day):
                remaining -= 1
        return WorkingDayResult(day, tuple(sorted(estimated)))

    def restricted(self, first_year: int, last_year: int) -> Calendar:
        """This calendar's days for the years it shares with `first_year`..`last_year`."""
        lo, hi = max(first_year, self.first_year), min(last_year, self.last_year)
        if lo > hi:
            raise ValueError(f"calendar {self.label} does not cover {first_year}–{last_year}")
        if (lo, hi) == (self.first_year, self.last_year):
            return self
        return calendar_from_days(
            source=self.source, first_year=lo, last_year=hi,
            published=[y for y in self.published if lo <= y <= hi],
            days_off=[d for d in self.days_off if lo <= d.year <= hi],
            working_weekends=[d for d in self.working_weekends if lo <= d.year <= hi])

    def changed_years(self, other: Calendar) -> tuple[int, ...]:
        """Years both cover whose days or publication differ between `self` and `other`."""
        out = []
        for y in range(max(self.first_year, other.first_year),
                       min(self.last_year, other.last_year) + 1):
            mine = ({d for d in self._off if d.year == y}, {d for d in self._working if d.year == y},
                    self.is_published(y))
            theirs = ({d for d in other._off if d.year == y},
                      {d for d in other._working if d.year == y}, other.is_published(y))
            if mine != theirs:
                out.append(y)
        return tuple(out)


def calendar_from_days(*, source: str, first_year: int, last_year: int, published: Iterable[int],
                       days_off: Iterable[dt.date], working_weekends: Iterable[dt.date]) -> Calendar:
    """A `Calendar` from its days (any order, repeats ignored), fingerprinted."""
    pub = tuple(sorted(set(published)))
    off = tuple(sorted(set(days_off)))
    work = tuple(sorted(set(working_weekends)))
    return Calendar(source=source, first_year=first_year, last_year=last_year, published=pub,
                    days_off=off, working_weekends=work,
                    fingerprint=_fingerprint(source, first_year, last_year, pub, off, work))


def _compat() -> Calendar:
    def days(table: dict[int, str]) -> list[dt.date]:
        return [dt.date(year, int(md[:2]), int(md[2:])) for year, row in table.items()
                for md in row.split()]

    cal = calendar_from_days(source=calendar_compat.SOURCE, first_year=calendar_compat.FIRST_YEAR,
                             last_year=calendar_compat.LAST_YEAR,
                             published=calendar_compat.PUBLISHED,
                             days_off=days(calendar_compat.DAYS_OFF),
                             working_weekends=days(calendar_compat.WORKING_WEEKENDS))
    if cal.fingerprint != calendar_compat.FINGERPRINT:
        raise RuntimeError("domain/calendar_compat.py was altered: its days no longer match "
                           "the fingerprint they were committed with")
    return cal


COMPAT_CALENDAR = _compat()
"""The frozen table of tasks whose spec records no calendar (and the default of the helpers
below): the `holidays` 0.109 table for 2000–2040, as every task used before calendars were
recorded."""


@dataclass(frozen=True)
class WorkingDayResult:
    """A date reached by counting working days, and whether any year crossed was unpublished."""

    day: dt.date
    estimated_years: tuple[int, ...]


def add_working_days(start: dt.date, n: int, calendar: Calendar = COMPAT_CALENDAR) -> WorkingDayResult:
    """`calendar.add_working_days(start, n)`."""
    return calendar.add_working_days(start, n)


def is_working_day(day: dt.date, calendar: Calendar = COMPAT_CALENDAR) -> bool:
    return calendar.is_working_day(day)


def is_published(year: int, calendar: Calendar = COMPAT_CALENDAR) -> bool:
    return calendar.is_published(year)


def published_years(calendar: Calendar = COMPAT_CALENDAR) -> frozenset[int]:
    """Years for which the official notice (with its 调休 days) is in `calendar`."""
    return frozenset(calendar.published)


def end_of_local_day(day: dt.date, tz: str = DEFAULT_TZ) -> dt.datetime:
    """"X月31日前" means by the end of that local day: the instant the next local day begins."""
    nxt = day + dt.timedelta(days=1)
    local = dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=ZoneInfo(tz))
    return local.astimezone(dt.UTC)


def local_text(moment: dt.datetime | None, tz: str = DEFAULT_TZ) -> str:
    """A time as people read it in the plan's zone; a deadline at local midnight (the instant
    the next day begins, "3月31日前") reads as 24:00 of its own day, as the plan wrote it."""
    if moment is None:
        return "—"
    local = moment.astimezone(ZoneInfo(tz))
    if local.time() == dt.time(0, 0):
        return f"{local.date() - dt.timedelta(days=1):%Y-%m-%d} 24:00"
    return f"{local:%Y-%m-%d %H:%M}"


def local_date(instant: dt.datetime, tz: str = DEFAULT_TZ) -> dt.date:
    """The local calendar date an instant falls in; an end-of-day deadline maps to its own day."""
    local = instant.astimezone(ZoneInfo(tz))
    if local.time() == dt.time(0, 0):
        return local.date() - dt.timedelta(days=1)
    return local.date()


def as_utc(instant: dt.datetime) -> dt.datetime:
    if instant.tzinfo is None:
        raise ValueError("naive datetime: every instant must carry its time zone")
    return instant.astimezone(dt.UTC)
