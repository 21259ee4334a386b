"""A known board for the web tests (and the screenshots): a small plan driven by the domain
simulator and recorded through the store's own write path (the `record_batch` activity: events,
read model and 督办单 notices), with its roster stored for sign-in.

State at NOW (Friday 2026-03-20 09:00 in Shanghai), five task instances:

| task | unit | township | state |
|---|---|---|---|
| T1 两委增补 | c01 文化路社区 | t01 城关街道 | both nodes accepted: closed, green, done |
| T1 两委增补 | c02 北关社区 | t01 城关街道 | N1 overdue since T0+5d: red, rungs fired |
| T1 两委增补 | v01 河西村 | t02 河西镇 | N1 accepted, progress 80: green |
| T2 网格化管理 | mzj 区民政局 | (county level) | N1 extended to T0+26d (asked T0+28d), progress 80: green |
| T2 网格化管理 | t02 河西镇 | t02 河西镇 | N1 due in two days, progress 70: yellow |

T1 is led by zzb (区委组织部), T2 by mzj (区民政局): a member of mzj sees both T2 rows; a
member of t01 (城关街道) sees nothing (its villages' tasks are theirs).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities.record import DubanActivities
from domain import commands as c
from domain import events as ev
from domain.plan import Member, NodeSpec, Plan, RecheckPolicy, TaskDef, TaskSpec, Unit, resolve_plan
from domain.projection import RecordBatch, notice_context, project
from service import users
from tests.domain_strategies import Sim
from tests.scenario import ladders

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai
NOW = T0 + dt.timedelta(days=18)  # Friday 2026-03-20 09:00 in Shanghai
PLAN = "board-2026"
PLAN_TITLE = "挂图测试计划（2026年）"

UNITS = (
    Unit(code="zzb", name="区委组织部", kind="office"),
    Unit(code="mzj", name="区民政局", kind="department"),
    Unit(code="t01", name="城关街道", kind="township"),
    Unit(code="t02", name="河西镇", kind="township"),
    Unit(code="c01", name="文化路社区", kind="community", parent="t01"),
    Unit(code="c02", name="北关社区", kind="community", parent="t01"),
    Unit(code="v01", name="河西村", kind="village", parent="t02"),
)
ROSTER = (
    Member(actor="m.c01", name="孙涛", unit="c01", roles=("member",)),
    Member(actor="m.c02", name="吴斌", unit="c02", roles=("member",)),
    Member(actor="m.v01", name="王建军", unit="v01", roles=("member",)),
    Member(actor="m.t02", name="王强", unit="t02", roles=("head",)),
    Member(actor="m.t01", name="李伟", unit="t01", roles=("member",)),  # no task of its own
    Member(actor="m.mzj", name="沈洁", unit="mzj", roles=("head", "lead")),
    Member(actor="lead.head", name="王芳", unit="zzb", roles=("lead", "head")),
    Member(actor="office.staff", name="赵磊", unit="zzb", roles=("office",)),
    Member(actor="leader", name="李国强", unit="zzb", roles=("leader",)),
    Member(actor="supervisor", name="周强", unit="zzb", roles=("supervisor",)),
    Member(actor="auditor", name="何敏", unit="zzb", roles=("auditor",)),
)


def days(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def plan() -> Plan:
    return Plan(
        code=PLAN, title=PLAN_TITLE, start=(T0 - dt.timedelta(days=1)).date(), start_at=T0,
        units=UNITS, roster=ROSTER, recheck=RecheckPolicy(percent=0),
        tasks=(
            TaskDef(code="T1", title="两委增补", lead_unit="zzb",
                    responsible=("c01", "c02", "v01"),
                    nodes=(NodeSpec(code="N1", title="摸底调查", due_at=days(5), planned_progress=50),
                           NodeSpec(code="N2", title="增补到位", due_at=days(30),
                                    planned_progress=100))),
            TaskDef(code="T2", title="网格化管理", lead_unit="mzj", responsible=("mzj", "t02"),
                    nodes=(NodeSpec(code="N1", title="网格划分", due_at=days(20),
                                    planned_progress=100),)),
        ),
    )


Script = list[tuple[float, Callable[[], c.Command]]]


def scripts() -> dict[str, Script]:
    """What each task's people do, at T0 + days."""
    return {
        f"{PLAN}/T1/c01": [
            (1, lambda: c.Acknowledge(actor="m.c01")),
            (3, lambda: c.ClaimNode(actor="m.c01", node="N1")),
            (4, lambda: c.AcceptNode(actor="lead.head", node="N1")),
            (10, lambda: c.ClaimNode(actor="m.c01", node="N2")),
            (11, lambda: c.AcceptNode(actor="supervisor", node="N2")),
        ],
        f"{PLAN}/T1/c02": [(1, lambda: c.Acknowledge(actor="m.c02"))],
        f"{PLAN}/T1/v01": [
            (1, lambda: c.Acknowledge(actor="m.v01")),
            (3, lambda: c.ClaimNode(actor="m.v01", node="N1")),
            (4, lambda: c.AcceptNode(actor="lead.head", node="N1")),
            (12, lambda: c.ReportProgress(actor="m.v01", percent=80)),
        ],
        f"{PLAN}/T2/mzj": [
            (1, lambda: c.Acknowledge(actor="m.mzj")),
            (16, lambda: c.RequestExtension(actor="m.mzj", node="N1", reason="汛期推迟",
                                            proposed_due=days(28))),
            (17, lambda: c.DecideExtension(actor="leader", node="N1", approve=True,
                                           granted_due=days(26), reason="同意延至26日")),
            (17.1, lambda: c.ReportProgress(actor="m.mzj", percent=80)),
        ],
        f"{PLAN}/T2/t02": [
            (1, lambda: c.Acknowledge(actor="m.t02")),
            (10, lambda: c.ReportProgress(actor="m.t02", percent=70)),
        ],
    }


def simulate(spec: TaskSpec, script: Script, until: dt.datetime) -> Sim:
    """The task as its workflow would have run it: the clock up to each command, the command,
    then the clock up to `until`."""
    sim = Sim(spec, spec.started_at)
    for at_days, make in script:
        at = days(at_days)
        sim.run_until(at)
        sim.ok(make(), at)
    sim.run_until(until)
    return sim


def record(store: Any, sim: Sim) -> None:
    """Everything the task decided, recorded as the workflow's activity records a batch."""
    state = sim.state
    batch = RecordBatch(
        task_id=sim.spec.task_id, events=[ev.event_json(e) for e in sim.events],
        read_model=project(state),
        notices=[notice_context(state, e) for e in sim.events if isinstance(e, ev.EscalationFired)])
    ActivityEnvironment().run(DubanActivities(store).record_batch, batch)


def store_roster(engine: Any, p: Plan) -> None:
    names = {u.code: u.name for u in p.units}
    users.store_roster(engine, p.code, p.roster, names, now=T0)


def seed(store: Any, p: Plan | None = None, until: dt.datetime = NOW,
         plays: dict[str, Script] | None = None) -> dict[str, Sim]:
    """Record the plan's tasks as of `until` and store its roster; the sims by task id."""
    p = p or plan()
    plays = scripts() if plays is None else plays
    sims = {}
    for spec in resolve_plan(p, ladders()):
        sim = simulate(spec, plays.get(spec.task_id, []), until)
        record(store, sim)
        sims[spec.task_id] = sim
    store_roster(store.engine, p)
    return sims


@contextmanager
def seeded_store(backend: str, tmp_path: Path) -> Iterator[Any]:
    """A store on `backend` (sqlite, or postgresql when configured) holding the known state."""
    from infra.db.store import open_store
    from tests.fixtures_db import empty_database

    with empty_database(backend, tmp_path) as url:
        st = open_store(url)
        try:
            seed(st)
            yield st
        finally:
            st.engine.dispose()
