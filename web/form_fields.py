"""What every form of the web app shares: who may send at all, how a form's fields and files
are read, the Chinese words for a payload field the task's parse refused, how evidence files
are stored for a payload, and how a redirect waits for the record.

Used by `web.forms` (the task page's forms) and `web.inspection_forms` (四不两直, a round
uploaded as a sheet).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from fastapi import HTTPException
from starlette.datastructures import FormData, UploadFile

from web import evidence
from web.access import task_url
from web.auth import Viewer
from web.context import WebContext

READ_ONLY = "您的角色（审计/纪委）只能查阅，不能办理任何事项"
STORE_WAIT_SECONDS = 5.0  # how long a redirect waits for the record to catch up with the answer

# Chinese messages for the payload fields a form maps to its inputs (the task's own parse
# names the field; the words are ours).
FIELD_MESSAGES: dict[str, str] = {
    "percent": "进度须为 0 到 100 之间的整数",
    "note": "内容过长（最多 4000 字）",
    "reason": "请写明理由（最多 4000 字）",
    "node": "请选择节点",
    "proposed_due": "请选择申请延至的日期",
    "granted_due": "日期无效",
    "approve": "请选择审批结论",
    "finding_id": "请选择问题",
    "step_key": "请选择要签收的督办",
    "passed": "请选择核查结论",
    "place": "请填写检查地点（最多 500 字）",
    "visited_at": "请填写检查时间",
    "outcome": "请选择检查结果",
    "inspection_id": "检查编号只能由字母、数字、- 和 _ 组成",
    "severity": "请选择严重程度",
    "description": "请描述发现的问题（最多 4000 字）",
    "evidence": "佐证文件无效",
    "location": "定位格式应为“纬度,经度”，例如 26.2634,117.6389",
    "task": "请至少选择一个任务",
}


def refuse(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def commanding(viewer: Viewer) -> None:
    if viewer.read_only:
        raise refuse(403, READ_ONLY)


def form_files(form: FormData, name: str) -> list[UploadFile]:
    return [v for v in form.getlist(name) if isinstance(v, UploadFile) and v.filename]


async def wait_recorded(ctx: WebContext, task_id: str, seq: int) -> None:
    """Until the store holds event `seq` of the task (the workflow records right after it
    answers), at most STORE_WAIT_SECONDS: the page redirected to then shows what was done."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORE_WAIT_SECONDS
    while ctx.store.head(task_id).seq < seq and loop.time() < deadline:
        await asyncio.sleep(0.05)


def done_url(task_id: str, form: str, answer: dict[str, Any]) -> str:
    seqs = [int(e["seq"]) for e in answer.get("events", []) if "seq" in e]
    query = {"done": form}
    if seqs:
        query["seq"] = f"{min(seqs)}-{max(seqs)}"
    return f"{task_url(task_id)}?{urlencode(query)}#answer"


def store_files(ctx: WebContext, uploads: list[UploadFile], task_ids: list[str],
                geo: str | None = None) -> list[dict[str, str]]:
    items = []
    for up in uploads:
        stored = evidence.store(ctx.evidence_dir, up.file, name=up.filename or "file",
                                content_type=up.content_type, task_ids=task_ids)
        item = {"sha256": stored.sha256, "name": stored.name}
        if geo:
            item["geo"] = geo
        items.append(item)
    return items
