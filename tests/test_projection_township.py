"""The board counts each task under its township (乡镇/街道): a village's task under its parent
township, a township's own task under itself, a county-level unit's under none."""

from __future__ import annotations

import datetime as dt

import pytest

from domain.decide import assign
from domain.evolve import evolve
from domain.plan import NodeSpec, Plan, TaskDef, Unit, resolve_plan
from domain.projection import project
from tests.scenario import ROSTER, ladders

UNITS = (
    Unit(code="office", name="区委组织部", kind="office"),
    Unit(code="mzj", name="民政局", kind="department"),
    Unit(code="town1", name="东城镇", kind="township"),
    Unit(code="v01", name="东城镇一村", kind="village", parent="town1"),
    Unit(code="v02", name="东城镇二村", kind="village", parent="town1"),
)
NOW = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("unit", "township", "township_name"), [
    ("v01", "town1", "东城镇"), ("town1", "town1", "东城镇"), ("mzj", None, None)])
def test_a_task_row_names_its_unit_and_township(unit: str, township: str | None,
                                                township_name: str | None) -> None:
    plan = Plan(code="p", title="测试计划", start=NOW.date(), units=UNITS, roster=ROSTER,
                tasks=(TaskDef(code="T1", title="两委增补", lead_unit="office", responsible=(unit,),
                               ladder="deadline-lights",
                               nodes=(NodeSpec(code="N1", title="完成", due=dt.date(2026, 12, 31),
                                               planned_progress=100),)),))
    (spec,) = resolve_plan(plan, ladders())
    row = project(evolve(None, assign(spec, NOW))).task
    names = {u.code: u.name for u in UNITS}
    assert (row.unit_code, row.unit_name) == (unit, names[unit])
    assert (row.township, row.township_name) == (township, township_name)
