"""Working-day calendar (工作日) on China's official schedule, and local-time deadlines.

Working days follow the State Council's yearly holiday notice, including the adjusted working
weekends (调休), as published in the maintained `holidays` package. A year whose notice the
package does not carry yet is *estimated* (statutory holidays only, no 调休); callers get that
fact back so it is flagged, never guessed silently.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from holidays.countries.china import China, ChinaStaticHolidays

DEFAULT_TZ = "Asia/Shanghai"


FIRST_YEAR, LAST_YEAR = 2000, 2040


def _load() -> tuple[frozenset[dt.date], frozenset[dt.date]]:
    # Loaded once, at import: workflows run this module inside Temporal's sandbox, where the
    # library's lazy per-year set-up (gettext → locale) is not allowed.
    cal = China(years=range(FIRST_YEAR, LAST_YEAR + 1))  # type: ignore[no-untyped-call]
    days_off = frozenset(d for d in cal if isinstance(d, dt.date))
    working_weekends = frozenset(d for d in cal.weekend_workdays
                                 if FIRST_YEAR <= d.year <= LAST_YEAR)
    return days_off, working_weekends


_DAYS_OFF, _WORKING_WEEKENDS = _load()


_PUBLISHED = frozenset(int(y) for y in ChinaStaticHolidays.special_public_holidays)


def published_years() -> frozenset[int]:
    """Years for which the official notice (with its 调休 days) is in the library."""
    return _PUBLISHED


def is_published(year: int) -> bool:
    return year in _PUBLISHED


def is_working_day(day: dt.date) -> bool:
    """工作日: a weekday that is no holiday, or a weekend day made a working day (调休)."""
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise ValueError(f"{day}: the working-day calendar covers {FIRST_YEAR}–{LAST_YEAR}")
    if day in _WORKING_WEEKENDS:
        return True
    return day.weekday() < 5 and day not in _DAYS_OFF


@dataclass(frozen=True)
class WorkingDayResult:
    """A date reached by counting working days, and whether any year crossed was unpublished."""

    day: dt.date
    estimated_years: tuple[int, ...]


def add_working_days(start: dt.date, n: int) -> WorkingDayResult:
    """The n-th working day after `start` (n >= 0; n == 0 gives `start` itself).

    "3个工作日内" counted from a date means the end of the third working day after it.
    """
    if n < 0:
        raise ValueError("working-day offsets must not be negative")
    day = start
    estimated: set[int] = set() if is_published(start.year) else {start.year}
    remaining = n
    while remaining > 0:
        day += dt.timedelta(days=1)
        if not is_published(day.year):
            estimated.add(day.year)
        if is_working_day(day):
            remaining -= 1
    return WorkingDayResult(day, tuple(sorted(estimated)))


def end_of_local_day(day: dt.date, tz: str = DEFAULT_TZ) -> dt.datetime:
    """"X月31日前" means by the end of that local day: the instant the next local day begins."""
    nxt = day + dt.timedelta(days=1)
    local = dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=ZoneInfo(tz))
    return local.astimezone(dt.UTC)


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
