"""督办单 documents and the channels that carry notifications.

A notice is rendered from a Markdown template; a channel delivers it. The default channel is the
outbox table (a row per recipient, delivered by whoever reads the outbox) plus a structured log
line. Both are idempotent per (task, step): a retried activity finds the rows already there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog

from domain.projection import NoticeContext
from infra.db.store import NOTICE_NUMBER_SLOT, notice_number_label

TEMPLATE = Template((Path(__file__).resolve().parent.parent / "infra" / "templates" / "notice.md")
                    .read_text(encoding="utf-8"))
log = structlog.get_logger("duban.notices")

_RECIPIENT_LABELS = {
    "unit": "责任单位", "unit_head": "责任单位主要负责人", "lead": "牵头单位", "supervisor": "督查组",
    "leader": "分管领导", "discipline": "纪委监委", "office": "专班/督查室",
}


@dataclass(frozen=True)
class Notice:
    task_id: str
    step_key: str
    node: str | None
    ladder: str
    step: str
    level: int
    title: str
    document: str
    reply_by: dt.datetime | None
    recipients: tuple[str, ...]
    action: str
    # The local year of the rung (in the plan's zone): a 督办单 is numbered within it.
    year: int | None = None
    # 〔2026〕第15号, once the store has numbered the 督办单 (reminders have none).
    number: str | None = None

    @property
    def numbered(self) -> bool:
        """督办单 are numbered; reminders (督办提醒) are not."""
        return self.action == "notice"


def _local(value: str | None, tz: str) -> str:
    if not value:
        return "—"
    return dt.datetime.fromisoformat(value).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


_WEEKDAYS = "一二三四五六日"


def _deadline(value: str | None, tz: str) -> str:
    """A 反馈时限 as people read it: a deadline at local midnight is the end of the day before
    ("2026-09-20（星期日）24:00前"), not the start of the next one."""
    if not value:
        return "—"
    local = dt.datetime.fromisoformat(value).astimezone(ZoneInfo(tz))
    clock = local.strftime("%H:%M")
    if local.time() == dt.time(0, 0):
        local, clock = local - dt.timedelta(days=1), "24:00"
    return f"{local:%Y-%m-%d}（星期{_WEEKDAYS[local.weekday()]}）{clock}前"


def lateness(due_since: dt.datetime, at: dt.datetime) -> str:
    """已逾期 as a 督办单 states it: whole days, or minutes within the first day."""
    late = at - due_since
    return f"{late.days}天" if late.days >= 1 else f"{int(late.total_seconds() // 60)}分钟"


def recipient_label(role: str) -> str:
    """A ladder recipient as people read it (责任单位, 分管领导, ...)."""
    return _RECIPIENT_LABELS.get(role, role)


def recipient_address(role: str, ctx: NoticeContext) -> str:
    """Where a role's copy goes; unit-scoped roles carry the unit's code."""
    if role in ("unit", "unit_head"):
        return f"{ctx.unit_code}:{role}"
    return role


def _missed_words(ctx: NoticeContext) -> str:
    """The earlier notices this task let pass their 反馈时限 unsigned and unanswered, named
    (step key "<kind>:<target>:<cycle>:<step>": the step and what it concerned)."""
    if not ctx.missed_replies:
        return ""
    named = []
    for key in ctx.missed_replies:
        parts = key.split(":")
        named.append(f"{parts[-1]}（{parts[1]}，{key}）" if len(parts) >= 4 else key)
    return ("\n\n**前次督办逾期未签收、未反馈**: " + "、".join(named)
            + "。请一并说明原因。")


def render_notice(ctx: NoticeContext, fired: dict[str, Any]) -> Notice:
    tz = ctx.timezone
    due_since = dt.datetime.fromisoformat(fired["due_since"])
    at = dt.datetime.fromisoformat(fired["at"])
    days_late = lateness(due_since, at)
    heading = {"notice": "督办单", "notify": "督办提醒"}[fired["action"]]
    title = f"{fired['title']}：{ctx.task_title}（{ctx.unit_name}）"
    document = TEMPLATE.substitute(
        heading=f"{heading} · {fired['title']}",
        # A 督办单's number is the store's to give (per plan and year, when first recorded).
        notice_no=(NOTICE_NUMBER_SLOT if fired["action"] == "notice"
                   else f"{ctx.task_id}#{fired['step_key']}"),
        plan_title=ctx.plan_title, task_title=ctx.task_title, unit_name=ctx.unit_name,
        unit_code=ctx.unit_code, lead_unit_name=ctx.lead_unit_name, target_title=ctx.target_title,
        due_since=_local(fired["due_since"], tz), days_late=days_late, ladder=fired["ladder"],
        step_title=fired["title"], level=fired["level"],
        required_at=_local(fired["required_at"], tz),
        recipients="、".join(_RECIPIENT_LABELS.get(r, r) for r in fired["recipients"]),
        demand=(fired["demand"] or "按要求整改落实") + _missed_words(ctx),
        reply_by=_deadline(fired.get("reply_by"), tz),
        seq=fired["seq"], task_id=ctx.task_id,
    )
    reply_by = dt.datetime.fromisoformat(fired["reply_by"]) if fired.get("reply_by") else None
    node = fired["target"] if fired["target_kind"] != "finding" else None
    return Notice(
        task_id=ctx.task_id, step_key=fired["step_key"], node=node, ladder=fired["ladder"],
        step=fired["step"], level=int(fired["level"]), title=title, document=document,
        reply_by=reply_by, action=fired["action"],
        recipients=tuple(recipient_address(r, ctx) for r in fired["recipients"]),
        year=at.astimezone(ZoneInfo(tz)).year,
    )


def issued(notice: Notice, row: Mapping[str, Any] | None) -> Notice:
    """The notice as the store filed it: its stored document and number (a retried activity
    gets the ones given the first time, never new ones)."""
    if row is None:
        return notice
    number = (notice_number_label(row["year"], row["number"])
              if row.get("number") is not None and row.get("year") is not None else None)
    return replace(notice, document=row["document"], number=number)


class Channel(Protocol):
    name: str

    def deliver(self, notice: Notice, recipient: str) -> bool:
        """Hand one copy over; True if it was new (False: already handed over before)."""
        ...


class OutboxChannel:
    """Writes an outbox row per recipient (at most once) and a structured log line when new."""

    name = "outbox"

    def __init__(self, store: Any):
        self._store = store

    def deliver(self, notice: Notice, recipient: str) -> bool:
        created = bool(self._store.add_outbox(
            task_id=notice.task_id, step_key=notice.step_key, channel=self.name,
            recipient=recipient, subject=notice.title,
            body={"title": notice.title, "level": notice.level, "ladder": notice.ladder,
                  "step": notice.step, "action": notice.action, "document": notice.document,
                  "number": notice.number},
        ))
        if created:
            log.info("notice.sent", channel=self.name, task_id=notice.task_id,
                     step_key=notice.step_key, recipient=recipient, notice_level=notice.level,
                     title=notice.title)
        return created
