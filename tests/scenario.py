"""Small plans for workflow tests, dated relative to the (time-skipping) server's clock."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from domain.ladder import Ladder
from domain.plan import Member, NodeSpec, Plan, RecheckPolicy, TaskDef, TaskSpec, Unit, resolve_plan
from planfiles.ladders import load_ladders

UNITS = (
    Unit(code="office", name="区委组织部", kind="office"),
    Unit(code="town1", name="东城镇", kind="township"),
    Unit(code="v01", name="东城镇一村", kind="village", parent="town1"),
    Unit(code="v02", name="东城镇二村", kind="village", parent="town1"),
)
ROSTER = (
    Member(actor="unit.member", name="王村委", unit="v01", roles=("member",)),
    Member(actor="unit.head", name="李书记", unit="v01", roles=("head",)),
    Member(actor="other.unit", name="赵村委", unit="v02", roles=("member",)),
    Member(actor="lead.head", name="陈部长", unit="office", roles=("lead", "head")),
    Member(actor="lead.member", name="周干事", unit="office", roles=("member",)),
    Member(actor="supervisor", name="刘督查", unit="office", roles=("supervisor",)),
    Member(actor="auditor", name="孙审计", unit="office", roles=("auditor",)),
    Member(actor="leader", name="吴书记", unit="office", roles=("leader",)),
    Member(actor="office.staff", name="郑专班", unit="office", roles=("office",)),
)


@lru_cache(maxsize=1)
def ladders() -> dict[str, Ladder]:
    return load_ladders()


def make_spec(now: dt.datetime, *, due_days: tuple[int, ...] = (10, 20), ladder: str = "deadline-lights",
              start_level: int | None = None, recheck_percent: int = 0, code: str = "T1",
              plan_code: str = "test", progress: tuple[int, ...] | None = None) -> TaskSpec:
    progress = progress or tuple(100 * (i + 1) // len(due_days) for i in range(len(due_days)))
    nodes = tuple(
        NodeSpec(code=f"N{i + 1}", title=f"节点{i + 1}", due_at=now + dt.timedelta(days=d),
                 planned_progress=p)
        for i, (d, p) in enumerate(zip(due_days, progress, strict=True))
    )
    plan = Plan(
        code=plan_code, title="测试计划", start=(now - dt.timedelta(days=1)).date(), start_at=now,
        units=UNITS, roster=ROSTER,
        recheck=RecheckPolicy(percent=recheck_percent),
        tasks=(TaskDef(code=code, title="两委增补", lead_unit="office", responsible=("v01",),
                       ladder=ladder, start_level=start_level, nodes=nodes),),
    )
    return resolve_plan(plan, ladders())[0]
