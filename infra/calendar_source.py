"""Where working-day calendars come from: the `holidays` package's table for China.

This adapter is the only place the `holidays` package is read. A task never consults it while
it runs: the plan loader takes from here the days for the years a plan spans (a `Calendar`
value) and records them in each task's spec, and a newly published year reaches a running task
only through the `update_calendar` command, which records the new days in its history. So an
upgrade of `holidays` (a release follows each December's State Council notice) changes what new
plans and explicit updates get, never the arithmetic of a running or replayed task.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata

from holidays.countries.china import China, ChinaStaticHolidays

from domain.calendar import Calendar, calendar_from_days, local_date
from domain.plan import CALENDAR_MARGIN_YEARS, Plan


def source_label() -> str:
    return f"holidays {importlib.metadata.version('holidays')} (CN)"


def china_calendar(first_year: int, last_year: int) -> Calendar:
    """China's official working-day calendar for `first_year`..`last_year` (inclusive), as the
    installed `holidays` package has it: days off, adjusted working weekends (调休), and which
    years' State Council notices it carries (the others are estimated: statutory days only)."""
    if first_year > last_year:
        raise ValueError(f"calendar years {first_year}..{last_year}: the first is after the last")
    # One year either side, so a holiday period spanning New Year is computed as a whole.
    table = China(years=range(first_year - 1, last_year + 2))  # type: ignore[no-untyped-call]
    days_off = [d for d in table if isinstance(d, dt.date) and first_year <= d.year <= last_year]
    working = [d for d in table.weekend_workdays if first_year <= d.year <= last_year]
    published = [int(y) for y in ChinaStaticHolidays.special_public_holidays
                 if first_year <= int(y) <= last_year]
    return calendar_from_days(source=source_label(), first_year=first_year, last_year=last_year,
                              published=published, days_off=days_off, working_weekends=working)


def plan_years(plan: Plan) -> tuple[int, int]:
    """The years a plan's tasks can count working days in: from its start to the last date it
    names, plus a margin for rungs and deadlines counted past that date."""
    years = [plan.start.year]
    if plan.start_at is not None:
        years.append(plan.start_at.year)
    for t in plan.tasks:
        if t.end is not None:
            years.append(t.end.year)
        for n in t.nodes:
            if n.due is not None:
                years.append(n.due.year)
            if n.due_at is not None and n.due_at.tzinfo is not None:
                years.append(local_date(n.due_at, plan.timezone).year)
            if n.working_days:
                # a node counted in working days lands at most ~1.5 calendar days per day later
                years.append(plan.start.year + (n.working_days * 3 // 2) // 365 + 1)
    return min(years), max(years) + CALENDAR_MARGIN_YEARS


def calendar_for_plan(plan: Plan) -> Calendar:
    """The calendar to resolve `plan` with (each task's spec keeps the years it needs)."""
    first, last = plan_years(plan)
    return china_calendar(first, last)


def snapshot_module(first_year: int, last_year: int) -> str:
    """Python source of a frozen calendar (how `domain/calendar_compat.py` was generated, once:
    the table tasks recorded before calendars were recorded used, kept so that their replay
    never depends on the installed package)."""
    cal = china_calendar(first_year, last_year)

    def by_year(days: tuple[dt.date, ...]) -> str:
        rows: dict[int, list[str]] = {}
        for d in days:
            rows.setdefault(d.year, []).append(f"{d.month:02d}{d.day:02d}")
        return "\n".join(f"    {y}: \"{' '.join(v)}\"," for y, v in sorted(rows.items()))

    return (
        '"""The working-day calendar every task used before calendars were recorded in its spec.\n\n'
        f"Generated once from {cal.source} for {first_year}–{last_year} and committed: tasks whose\n"
        "spec names no calendar (histories recorded before it did) keep exactly this arithmetic,\n"
        "whatever `holidays` release is installed. Do not edit or regenerate.\n"
        '"""\n\n'
        f"SOURCE = {cal.source!r}\n"
        f"FIRST_YEAR, LAST_YEAR = {first_year}, {last_year}\n"
        f"PUBLISHED = {cal.published!r}\n"
        f"FINGERPRINT = {cal.fingerprint!r}\n\n"
        "# MMDD per year\n"
        f"DAYS_OFF: dict[int, str] = {{\n{by_year(cal.days_off)}\n}}\n\n"
        f"WORKING_WEEKENDS: dict[int, str] = {{\n{by_year(cal.working_weekends)}\n}}\n"
    )
