"""A sample 四不两直 inspection round for the demo plan: the sheet `starter.py inspect import`
reads, written by `starter.py inspect template FILE`.

The demo plan is dated relative to the moment it is made, and a visit must lie between a task's
start and the time of import, so the round cannot be a fixed file: it is written on demand with
visit times just before now, for tasks of the demo plan (whose ids never change). Every row is
one an inspector may record on a task that is still open: a supervisor (督查组) who does not
belong to the unit, inspecting no node (so the round never accepts or reopens anyone's claim).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

from domain.plan import TaskSpec

HEADERS = ("任务ID", "检查编号", "督查人", "检查时间", "地点", "检查节点", "结果", "严重程度",
           "问题描述", "问题编号", "证据SHA256")

# (outcome, findings as (severity, description)) for the tasks of the round, in order.
VISITS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("达标", ()),
    ("基本达标", (("一般", "会议记录未按时归档"),)),
    ("基本达标", (("一般", "公示照片未留存"), ("较重", "2户群众对公示内容不知情"))),
)


def sample_round(specs: Sequence[TaskSpec], now: dt.datetime, round_code: str = "r1") -> list[dict[str, str]]:
    """Rows for the first tasks of `specs` that have a supervisor from outside the unit: one
    inspection each (a row per finding), visited half an hour before `now`."""
    if now.tzinfo is None:
        raise ValueError("sample_round needs an aware `now`")
    rows: list[dict[str, str]] = []
    chosen = [s for s in specs if _inspector(s, 0) is not None][: len(VISITS)]
    if len(chosen) < len(VISITS):
        raise ValueError(f"the plan has {len(chosen)} task(s) a supervisor from outside the unit "
                         f"may inspect; a sample round needs {len(VISITS)}")
    visited = (now - dt.timedelta(minutes=30)).replace(second=0, microsecond=0)
    for i, (spec, (outcome, findings)) in enumerate(zip(chosen, VISITS, strict=True)):
        inspector = _inspector(spec, i)
        assert inspector is not None
        base = {"任务ID": spec.task_id, "检查编号": f"{round_code}-{i + 1:02d}", "督查人": inspector,
                "检查时间": visited.astimezone(ZoneInfo(spec.timezone)).isoformat(), "地点": f"{spec.unit.name}党群服务中心",
                "检查节点": "", "结果": outcome}
        if not findings:
            rows.append(base)
        for n, (severity, description) in enumerate(findings, start=1):
            rows.append({**base, "严重程度": severity, "问题描述": description,
                         "问题编号": f"{round_code}-{i + 1:02d}-{n}"})
    return rows


def _inspector(spec: TaskSpec, turn: int) -> str | None:
    """A supervisor not of the task's unit, taking turns through the roster."""
    supervisors = [m.actor for m in spec.roster
                   if "supervisor" in m.roles and m.unit != spec.unit.code]
    return supervisors[turn % len(supervisors)] if supervisors else None


def write_round(rows: Sequence[dict[str, str]], path: Path) -> None:
    """The sheet as .xlsx (what inspection teams fill in) or .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HEADERS)
            writer.writeheader()
            for r in rows:
                writer.writerow({h: r.get(h, "") for h in HEADERS})
        return
    if path.suffix.lower() != ".xlsx":
        raise ValueError(f"{path}: expected a .xlsx or .csv file name")
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "四不两直"
    ws.append(list(HEADERS))
    for r in rows:
        ws.append([r.get(h, "") for h in HEADERS])
    wb.save(path)
