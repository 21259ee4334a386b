"""Server-rendered pages: one Jinja2 environment, autoescaped, with the app's filters."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# The plans this app serves are local to one county; times are shown in its zone.
LOCAL_TZ = ZoneInfo("Asia/Shanghai")

LIGHT_LABELS = {"green": "绿灯", "yellow": "黄灯", "red": "红灯"}
STATUS_LABELS = {
    "assigned": "已下达", "acknowledged": "已签收", "in_progress": "推进中", "claimed": "待验收",
    "completed": "已完成", "closed": "已销号", "running": "推进中",
}
ROLE_LABELS = {
    "member": "单位成员", "head": "单位负责人", "lead": "牵头单位", "supervisor": "督查组",
    "auditor": "审计", "office": "督查办", "leader": "领导", "discipline": "纪委",
}


def local_time(value: dt.datetime | str | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(LOCAL_TZ).strftime(fmt)


def duration(delta: dt.timedelta) -> str:
    """A span in Chinese, to the minute past an hour: 3天4小时5分, 2小时0分, 5分50秒, 45秒."""
    total = int(abs(delta).total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}天{hours}小时{minutes}分"
    if hours:
        return f"{hours}小时{minutes}分"
    if minutes:
        return f"{minutes}分{secs}秒"
    return f"{secs}秒"


def local_date(value: dt.datetime | str | None) -> str:
    return local_time(value, "%Y-%m-%d")


TEMPLATES.env.filters["local_time"] = local_time
TEMPLATES.env.filters["local_date"] = local_date
TEMPLATES.env.globals["LIGHT_LABELS"] = LIGHT_LABELS
TEMPLATES.env.globals["STATUS_LABELS"] = STATUS_LABELS
TEMPLATES.env.globals["ROLE_LABELS"] = ROLE_LABELS


def render(request: Request, name: str, status_code: int = 200,
           headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
    """A page, with the signed-in viewer (if any) and its CSRF token available to the layout."""
    context.setdefault("viewer", getattr(request.state, "viewer", None))
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code,
                                      headers=dict(headers) if headers else None)
