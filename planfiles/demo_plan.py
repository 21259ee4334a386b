"""The plan `make demo` loads: the sample plan re-dated around now, so that red, yellow and
green tasks, and rungs firing, are visible within minutes."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from domain.calendar import add_working_days
from domain.plan import (
    NodeSpec,
    Plan,
    RecheckPolicy,
    TaskDef,
)
from planfiles.xlsx_format import zone

DEMO_LADDER = "demo-minutes"


def demo_plan(now: dt.datetime, base: Plan) -> Plan:
    """`base` re-dated around `now` for `make demo`: something red at once, something turning
    yellow then red while one watches (ladder `demo-minutes`), the rest green or yellow on
    their own ladders with dates in the coming weeks."""
    if now.tzinfo is None:
        raise ValueError("demo_plan needs an aware `now`")
    tz = zone(base.timezone)
    now = now.astimezone(tz).replace(microsecond=0)
    today = now.date()
    start_at = now - dt.timedelta(days=2)
    villages = [u.code for u in base.units if u.kind == "village"] or [
        u.code for u in base.units if u.kind == "community"
    ]
    lead = next((u.code for u in base.units if u.kind == "office"), base.units[0].code)

    def minutes(
        offsets: Sequence[int], src: TaskDef | None, titles: Sequence[str]
    ) -> tuple[NodeSpec, ...]:
        base_nodes = list(src.nodes) if src else []
        out = []
        for i, off in enumerate(offsets):
            code, title = (
                (base_nodes[i].code, base_nodes[i].title)
                if i < len(base_nodes)
                else (f"n{i + 1}", titles[i])
            )
            title = re.sub(r"（[^（）]*）$", "", title)  # "（12月10日前）" no longer applies
            out.append(
                NodeSpec(
                    code=code,
                    title=title,
                    due_at=now + dt.timedelta(minutes=off),
                    planned_progress=100 * (i + 1) // len(offsets),
                )
            )
        return tuple(out)

    red = _find_task(base, "班子分工")
    soon = _find_task(base, "网格化")
    tasks: list[TaskDef] = [
        TaskDef(
            code=red.code if red else "demo-red",
            title=red.title if red else "乡镇（街道）领导班子分工",
            category=red.category if red else "演示",
            lead_unit=red.lead_unit if red else lead,
            standard=red.standard if red else "",
            ladder=DEMO_LADDER,
            responsible=red.responsible if red else (),
            responsible_kind=(red.responsible_kind if red else "township"),
            nodes=minutes((-5, 6, 10), red, ("拟定分工方案", "党委会研究确定", "分工公示并备案")),
        ),
        TaskDef(
            code=soon.code if soon else "demo-soon",
            title=soon.title if soon else "网格化管理进入运行阶段",
            category=soon.category if soon else "演示",
            lead_unit=soon.lead_unit if soon else lead,
            standard=soon.standard if soon else "",
            ladder=DEMO_LADDER,
            responsible=tuple(villages[:4]),
            nodes=minutes((1, 5, 9), soon, ("划分网格", "配齐网格员", "进入运行阶段")),
        ),
    ]
    used = {t.code for t in tasks}
    k = 0
    for t in base.tasks:
        if t.code in used:
            continue
        if not t.nodes:  # a ladder that imposes its own nodes (13710): they run from start_at
            tasks.append(t)
            continue
        first = today + dt.timedelta(days=2 if k % 4 == 1 else 7 + k)
        k += 1
        cursor = first - dt.timedelta(days=7)
        rebased = []
        for n in t.nodes:
            if n.working_days is not None and n.after not in (None, "start"):
                cursor = add_working_days(cursor, n.working_days).day
                rebased.append(n)
                continue
            cursor += dt.timedelta(days=7)
            rebased.append(
                n.model_copy(
                    update={
                        "due": cursor,
                        "due_at": None,
                        "working_days": None,
                        "after": None,
                    }
                )
            )
        tasks.append(
            t.model_copy(
                update={
                    "nodes": tuple(rebased),
                    "end": cursor if t.end is not None else None,
                }
            )
        )
    return base.model_copy(
        update={
            "code": f"demo-{base.code}",
            "title": f"{base.title}（演示）",
            "start": start_at.date(),
            "start_at": start_at,
            "tasks": tuple(tasks),
            "recheck": RecheckPolicy(
                percent=base.recheck.percent, after={"minutes": 10}, window={"minutes": 10}
            ),
        }
    )


def _find_task(plan: Plan, word: str) -> TaskDef | None:
    return next((t for t in plan.tasks if word in t.title), None)
