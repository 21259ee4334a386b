"""The 督办单 as a document (公文): what its printed page says, for the PDF and the print page.

A `NoticeSheet` is built from the notice's row in the store (its number, 签收, the missed
反馈时限) and the task's record (the EscalationFired of its step and the task as assigned), so
the document can be printed again at any time and says what was issued: the rung's own
time, demand and 反馈时限, never today's. The issuing office is the plan's office (the unit of
the roster's 专班/督查办 role, read from the roster read model), else 督查室.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, select
from sqlalchemy.engine import Engine

from activities.notices import lateness, recipient_label
from domain import events as ev
from domain.calendar import local_text
from domain.evolve import evolve
from domain.projection import notice_context
from domain.state import TaskState
from infra.db.models import PersonRow
from infra.db.store import EventStore, notice_number_label

OFFICE_FALLBACK = "督查室"
UNNUMBERED = "（未编号）"
_WEEKDAYS = "一二三四五六日"
_TARGET_KINDS = {"node": "节点", "finding": "整改问题", "false_report": "虚报节点"}
people_t: Table = PersonRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class NoticeRecord:
    """What a 督办单 needs besides its row: the task's record and the issuing office's name."""

    events: tuple[ev.Event, ...]
    office: str | None = None


@dataclass(frozen=True)
class NoticeSheet:
    """Every line of a printed 督办单, as display text."""

    notice_id: int | None
    task_id: str
    step_key: str
    seq: int
    kind: str  # 督办单 (numbered) or 督办提醒
    numbered: bool
    number: str  # 〔2026〕第15号, or （未编号） for a reminder or a notice issued before numbering
    office: str
    plan_title: str
    task_title: str
    unit_name: str
    unit_code: str
    lead_unit_name: str
    target_kind: str  # 节点 / 整改问题 / 虚报节点
    target: str  # the node (code and title) or the finding
    due: str  # 应完成时间
    days_late: str
    demand: str
    reply_by: str  # 反馈时限
    ladder: str  # the ladder's title
    step_title: str
    level: int
    recipients: str
    issued_at: str  # the rung's local time
    issued_on: str  # 2026年3月5日 (成文日期)
    issued: dt.datetime  # the rung's time, in the plan's zone
    signed: str | None  # 签收: "2026-03-06 09:12 王芳（wang.fang）", None while unsigned
    reply_missed: str | None  # when it was found neither signed for nor answered

    @property
    def file_name(self) -> str:
        """An ASCII download name (the task's and step's codes, no CJK: every mail client and
        browser keeps it)."""
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-"
                       for ch in f"{self.task_id}-{self.step_key}")
        return f"dubandan-{safe}.pdf"


def deadline_text(moment: dt.datetime | None, tz: str) -> str:
    """反馈时限 with its weekday: "2026-09-20（星期日）24:00前"."""
    if moment is None:
        return "—"
    local = moment.astimezone(ZoneInfo(tz))
    clock = local.strftime("%H:%M")
    if local.time() == dt.time(0, 0):
        local, clock = local - dt.timedelta(days=1), "24:00"
    return f"{local:%Y-%m-%d}（星期{_WEEKDAYS[local.weekday()]}）{clock}前"


def chinese_date(moment: dt.datetime, tz: str) -> str:
    """成文日期 as official documents print it: 2026年3月5日 (no leading zeros)."""
    local = moment.astimezone(ZoneInfo(tz))
    return f"{local.year}年{local.month}月{local.day}日"


def number_text(row: Mapping[str, Any]) -> str:
    if row.get("number") is None or row.get("year") is None:
        return UNNUMBERED
    return notice_number_label(int(row["year"]), int(row["number"]))


def notice_sheet(notice_row: Mapping[str, Any], record: NoticeRecord) -> NoticeSheet:
    """The printed 督办单 of a `notices` row, from the task's record. Raises LookupError if the
    record has no EscalationFired of the row's step (a row and a record that do not belong
    together)."""
    step_key = str(notice_row["step_key"])
    state: TaskState | None = None
    fired: ev.EscalationFired | None = None
    for e in record.events:
        state = evolve(state, e)
        if isinstance(e, ev.EscalationFired) and e.step_key == step_key:
            fired = e
            break
    if fired is None or state is None:
        raise LookupError(f"no EscalationFired {step_key!r} in the record of "
                          f"{notice_row.get('task_id')!r}")
    spec = state.spec
    tz = spec.timezone
    ctx = notice_context(state, fired)
    ladder = spec.ladders.get(fired.ladder)
    names = {m.actor: m.name for m in spec.roster}
    signed = None
    if notice_row.get("signed_at") is not None:
        who = notice_row.get("signed_by") or ""
        person = f"{names[who]}（{who}）" if who in names else who
        signed = f"{local_text(notice_row['signed_at'], tz)} {person}".strip()
    missed = notice_row.get("reply_missed_at")
    if fired.target_kind == "node":
        node = state.node(fired.target)
        target = f"{fired.target} {node.title}" if node else fired.target
    else:
        target = ctx.target_title
    recipients = "、".join(
        f"{recipient_label(r)}（{spec.unit.name}）" if r in ("unit", "unit_head")
        else recipient_label(r)
        for r in fired.recipients)
    return NoticeSheet(
        notice_id=notice_row.get("id"), task_id=spec.task_id, step_key=step_key,
        seq=fired.seq, kind="督办单" if fired.action == "notice" else "督办提醒",
        numbered=notice_row.get("number") is not None, number=number_text(notice_row),
        office=record.office or OFFICE_FALLBACK, plan_title=spec.plan_title,
        task_title=spec.title, unit_name=spec.unit.name, unit_code=spec.unit.code,
        lead_unit_name=spec.lead_unit.name,
        target_kind=_TARGET_KINDS.get(fired.target_kind, fired.target_kind), target=target,
        due=local_text(fired.due_since, tz), days_late=lateness(fired.due_since, fired.at),
        demand=fired.demand or "按要求整改落实", reply_by=deadline_text(fired.reply_by, tz),
        ladder=ladder.title if ladder else fired.ladder, step_title=fired.title,
        level=fired.level, recipients=recipients, issued_at=local_text(fired.at, tz),
        issued_on=chinese_date(fired.at, tz), issued=fired.at.astimezone(ZoneInfo(tz)),
        signed=signed,
        reply_missed=local_text(missed, tz) if missed is not None else None,
    )


def office_name(engine: Engine, plan_code: str) -> str | None:
    """The plan's issuing office: the unit of its roster's office role (专班/督查办). With
    several, the unit most of them belong to (ties: the first by name), so the header does
    not change with the roster's order."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(people_t.c.unit_name, people_t.c.roles)
            .where(people_t.c.plan_code == plan_code)).all()
    counts: dict[str, int] = {}
    for unit_name, roles in rows:
        if unit_name and "office" in (roles or ()):
            counts[unit_name] = counts.get(unit_name, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda name: (-counts[name], name))


def load_notice_record(store: EventStore, task_id: str) -> NoticeRecord:
    """The task's record and its plan's office, read from the store (no engine needed)."""
    events = tuple(ev.parse_event(s.event) for s in store.load(task_id))
    if not events or not isinstance(events[0], ev.TaskAssigned):
        raise LookupError(f"no record of task {task_id!r}")
    return NoticeRecord(events, office_name(store.engine, events[0].spec.plan_code))


def sheet_for(store: EventStore, task_id: str, step_key: str) -> NoticeSheet | None:
    """The 督办单 of (task, step) as stored, or None if no such notice was recorded."""
    row = store.notice(task_id, step_key)
    if row is None:
        return None
    return notice_sheet(row, load_notice_record(store, task_id))
