"""督办单 documents and the channels that carry notifications.

A notice is rendered from a Markdown template; a channel delivers it. The default channel is the
outbox table (a row per recipient, delivered by whoever reads the outbox) plus a structured log
line. Both are idempotent per (task, step): a retried activity finds the rows already there.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog

from domain.projection import NoticeContext

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


def recipient_address(role: str, ctx: NoticeContext) -> str:
    """Where a role's copy goes; unit-scoped roles carry the unit's code."""
    if role in ("unit", "unit_head"):
        return f"{ctx.unit_code}:{role}"
    return role


def render_notice(ctx: NoticeContext, fired: dict[str, Any]) -> Notice:
    tz = ctx.timezone
    due_since = dt.datetime.fromisoformat(fired["due_since"])
    at = dt.datetime.fromisoformat(fired["at"])
    late = at - due_since
    days_late = f"{late.days}天" if late.days >= 1 else f"{int(late.total_seconds() // 60)}分钟"
    heading = {"notice": "督办单", "notify": "督办提醒"}[fired["action"]]
    title = f"{fired['title']}：{ctx.task_title}（{ctx.unit_name}）"
    document = TEMPLATE.substitute(
        heading=f"{heading} · {fired['title']}", notice_no=f"{ctx.task_id}#{fired['step_key']}",
        plan_title=ctx.plan_title, task_title=ctx.task_title, unit_name=ctx.unit_name,
        unit_code=ctx.unit_code, lead_unit_name=ctx.lead_unit_name, target_title=ctx.target_title,
        due_since=_local(fired["due_since"], tz), days_late=days_late, ladder=fired["ladder"],
        step_title=fired["title"], level=fired["level"],
        required_at=_local(fired["required_at"], tz),
        recipients="、".join(_RECIPIENT_LABELS.get(r, r) for r in fired["recipients"]),
        demand=fired["demand"] or "按要求整改落实", reply_by=_deadline(fired.get("reply_by"), tz),
        seq=fired["seq"], task_id=ctx.task_id,
    )
    reply_by = dt.datetime.fromisoformat(fired["reply_by"]) if fired.get("reply_by") else None
    node = fired["target"] if fired["target_kind"] != "finding" else None
    return Notice(
        task_id=ctx.task_id, step_key=fired["step_key"], node=node, ladder=fired["ladder"],
        step=fired["step"], level=int(fired["level"]), title=title, document=document,
        reply_by=reply_by, action=fired["action"],
        recipients=tuple(recipient_address(r, ctx) for r in fired["recipients"]),
    )


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
                  "step": notice.step, "action": notice.action, "document": notice.document},
        ))
        if created:
            log.info("notice.sent", channel=self.name, task_id=notice.task_id,
                     step_key=notice.step_key, recipient=recipient, level=notice.level,
                     title=notice.title)
        return created
