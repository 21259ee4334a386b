"""Every escalation ladder in domain/ladders, run by the clock alone (no Temporal).

The simulator ticks at each `next_wakeup`, as the workflow's durable timer does, so a rung must
fire at the very instant its ladder names: `step.after.after(due)`.
"""

from __future__ import annotations

import datetime as dt

import pytest

from domain import commands as c
from domain import events as ev
from domain.calendar import (
    add_working_days,
    end_of_local_day,
    is_published,
    is_working_day,
    local_date,
)
from domain.ladder import Ladder, Offset
from domain.plan import NodeSpec, Plan, TaskDef, estimated_calendar_years, resolve_plan
from domain.plan import TaskSpec as Spec
from domain.rules import light_at, main_ladder
from tests.domain_strategies import Sim, build_spec, fired, local, of_type
from tests.scenario import ROSTER, UNITS, ladders

ALL_LADDERS = ("deadline-lights", "13710", "sanming", "rectification", "false-report",
               "demo-minutes")
D = dt.date


def test_every_ladder_file_is_covered_here() -> None:
    assert set(ladders()) == set(ALL_LADDERS)


def expected_rungs(spec: Spec, start_level: int | None = None) -> list[tuple[str, str, dt.datetime]]:
    """(node, step, instant) for every rung of every node, in the ladder's own terms."""
    lad = main_ladder_of(spec)
    out = []
    for n in spec.nodes:
        for step in lad.steps_from(start_level):
            out.append((n.code, step.code, step.after.after(n.due, spec.timezone)[0]))
    return sorted(out, key=lambda r: (r[2], r[0]))


def main_ladder_of(spec: Spec) -> Ladder:
    return spec.ladders[spec.ladder]


def rungs_of(events: list[ev.Event]) -> list[tuple[str, str, dt.datetime]]:
    return sorted(((f.target, f.step, f.at) for f in fired(events)), key=lambda r: (r[2], r[0]))


# --- untouched, done in time ----------------------------------------------------------------------

DUES = {
    "ordinary": end_of_local_day(D(2026, 3, 20)),
    "before-guoqing": end_of_local_day(D(2026, 9, 29)),
    "before-chunjie": end_of_local_day(D(2026, 2, 13)),
}


def spec_due(ladder: str, due: dt.datetime, **kw: object) -> Spec:
    start = due - dt.timedelta(days=10)
    if ladder == "13710":  # its own obligations: plan 1 day, progress 3 days, done 7 days
        return build_spec(start, due_days=(), ladder=ladder, **kw)  # type: ignore[arg-type]
    return build_spec(start, dues=(due,), ladder=ladder, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("when", sorted(DUES))
@pytest.mark.parametrize("ladder", ALL_LADDERS)
def test_an_untouched_task_gets_exactly_its_rungs_at_their_times(ladder: str, when: str) -> None:
    spec = spec_due(ladder, DUES[when])
    sim = Sim(spec, spec.started_at)
    sim.run_out()
    got = fired(sim.events)
    assert rungs_of(sim.events) == expected_rungs(spec)
    lad = main_ladder_of(spec)
    for n in spec.nodes:
        mine = [f for f in got if f.target == n.code]
        assert [f.step for f in mine] == [s.code for s in lad.steps]  # in the ladder's order
        for f, step in zip(mine, lad.steps, strict=True):
            assert f.at == f.required_at  # on time, to the microsecond
            assert f.due_since == n.due
            assert (f.level, f.action, f.recipients, f.title) == (
                step.level, step.action, step.recipients, step.title)
            assert f.ladder == lad.code and f.target_kind == "node"
            assert f.step_key == f"node:{n.code}:0:{step.code}"
            want_reply = step.reply_within.after(f.at, spec.timezone)[0] if step.reply_within else None
            assert f.reply_by == want_reply
    assert sim.state.level == lad.steps[-1].level
    assert sim.state.light == "red"
    assert sim.state.status == "assigned"


@pytest.mark.parametrize("ladder", ALL_LADDERS)
def test_a_task_done_before_its_due_time_gets_no_rung(ladder: str) -> None:
    spec = spec_due(ladder, DUES["ordinary"])
    sim = Sim(spec, spec.started_at)
    t = spec.started_at + dt.timedelta(hours=1)
    for n in spec.nodes:
        if n.kind == "report":
            sim.ok(c.ReportProgress(actor="unit.member", percent=40), t)
        else:
            sim.ok(c.ClaimNode(actor="unit.member", node=n.code), t)
            sim.ok(c.AcceptNode(actor="supervisor", node=n.code))
    sim.run_out()
    assert fired(sim.events) == []
    (done,) = of_type(sim.events, ev.TaskCompleted)
    assert done.on_time is True
    assert sim.state.status == "closed"  # recheck 0 %: closed at once


# --- claims pause, rejections resume ------------------------------------------------------------

def test_a_pending_claim_pauses_escalation_and_a_rejected_claim_catches_up() -> None:
    due = DUES["ordinary"]
    spec = build_spec(due - dt.timedelta(days=10), dues=(due,))
    sim = Sim(spec, spec.started_at)
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), due - dt.timedelta(days=1))
    late = due + dt.timedelta(days=12)
    sim.run_until(late)
    assert fired(sim.events) == []  # claimed: the unit says it is done; the check is pending
    assert not any("overdue" in r for r in light_at(sim.state, late)[1])
    sim.ok(c.RejectClaim(actor="lead.member", node="N1", reason="佐证不足"))
    caught_up = sim.tick(late)
    steps = main_ladder_of(spec).steps
    overdue = [s for s in steps if s.after.after(due, spec.timezone)[0] <= late]
    assert [s.code for s in overdue] == ["remind", "order", "talk"]  # 12 days ≈ 8 working days
    assert [(f.step, f.required_at, f.at) for f in fired(caught_up)] == [
        (s.code, s.after.after(due, spec.timezone)[0], late) for s in overdue]
    assert sim.state.light == "red"
    sim.run_out()
    rest = fired(sim.events)[len(overdue):]
    assert [(f.step, f.at) for f in rest] == [
        (s.code, s.after.after(due, spec.timezone)[0]) for s in steps[len(overdue):]]


def test_a_claim_accepted_late_is_not_on_time_and_stops_the_ladder() -> None:
    due = DUES["ordinary"]
    spec = build_spec(due - dt.timedelta(days=10), dues=(due,))
    sim = Sim(spec, spec.started_at)
    sim.run_until(due + dt.timedelta(days=2))
    assert [f.step for f in fired(sim.events)] == ["remind"]
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"))
    (acc,) = sim.ok(c.AcceptNode(actor="supervisor", node="N1"))
    assert isinstance(acc, ev.NodeAccepted) and acc.on_time is False
    sim.run_out()
    assert [f.step for f in fired(sim.events)] == ["remind"]
    (done,) = of_type(sim.events, ev.TaskCompleted)
    assert done.on_time is False


# --- 三明: a major item starts higher ----------------------------------------------------------

@pytest.mark.parametrize(("level", "steps"), [(None, ["blue", "orange", "red"]),
                                             (2, ["orange", "red"]), (3, ["red"])])
def test_sanming_start_level_skips_the_lower_notices(level: int | None, steps: list[str]) -> None:
    due = DUES["before-guoqing"]
    spec = spec_due("sanming", due, start_level=level)
    sim = Sim(spec, spec.started_at)
    sim.run_out()
    got = fired(sim.events)
    assert [f.step for f in got] == steps
    lad = main_ladder_of(spec)
    first = got[0]
    assert first.at == due  # the starting notice goes out the moment the item is overdue
    assert first.level == (level or 1)
    by_code = {s.code: s for s in lad.steps}
    for f in got[1:]:
        assert f.at == by_code[f.step].after.after(due, spec.timezone)[0]
    if level == 2:
        assert [f.title for f in got] == ["橙色督办预警（重新限期）", "红色督办警告"]
        # red: 8 working days after end of Sep 29 — Sep 30, Oct 8, 9, 10 (Sat, worked), 12..15
        assert local_date(got[1].at) == D(2026, 10, 15)


# --- 13710 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("major", "done_days"), [(False, 7), (True, 30)])
def test_13710_imposes_its_obligation_nodes(major: bool, done_days: int) -> None:
    start = local(2026, 5, 11, 9)
    spec = build_spec(start, due_days=(), ladder="13710", major=major)
    assert [(n.code, n.kind, n.due - spec.started_at, n.planned_progress) for n in spec.nodes] == [
        ("plan", "milestone", dt.timedelta(days=1), 10),
        ("progress", "report", dt.timedelta(days=3), 30),
        ("done", "milestone", dt.timedelta(days=done_days), 100),
    ]
    assert spec.started_at == start


def test_13710_a_progress_report_meets_the_report_node() -> None:
    start = local(2026, 5, 11, 9)
    spec = build_spec(start, due_days=(), ladder="13710")
    sim = Sim(spec, start)
    refused = sim.send(c.ClaimNode(actor="unit.member", node="progress"), start)
    assert isinstance(refused, c.Rejection) and refused.code == "not_allowed"
    (rep,) = sim.ok(c.ReportProgress(actor="unit.head", percent=20),
                    start + dt.timedelta(days=2))
    assert isinstance(rep, ev.ProgressReported) and rep.meets_report_node == "progress"
    node = sim.state.node("progress")
    assert node is not None and node.status == "done" and node.on_time is True
    # the next report meets no node: there is none left open
    (again,) = sim.ok(c.ReportProgress(actor="unit.head", percent=30))
    assert again.meets_report_node is None  # type: ignore[attr-defined]
    sim.run_until(start + dt.timedelta(days=8))
    assert {f.target for f in fired(sim.events)} == {"plan", "done"}


def test_13710_a_late_progress_report_still_meets_the_node_but_not_on_time() -> None:
    start = local(2026, 5, 11, 9)
    spec = build_spec(start, due_days=(), ladder="13710")
    sim = Sim(spec, start)
    sim.run_until(start + dt.timedelta(days=3, hours=5))
    assert ("progress", "remind") in {(f.target, f.step) for f in fired(sim.events)}
    (rep,) = sim.ok(c.ReportProgress(actor="unit.member", percent=30))
    assert rep.meets_report_node == "progress"  # type: ignore[attr-defined]
    node = sim.state.node("progress")
    assert node is not None and node.status == "done" and node.on_time is False


# --- extensions -------------------------------------------------------------------------------

def test_an_approved_extension_moves_the_rungs_to_the_granted_due() -> None:
    due = DUES["ordinary"]
    spec = build_spec(due - dt.timedelta(days=10), dues=(due,))
    sim = Sim(spec, spec.started_at)
    t = due - dt.timedelta(days=2)
    sim.ok(c.RequestExtension(actor="unit.member", node="N1", reason="村民代表会议推迟",
                              proposed_due=D(2026, 4, 10)), t)
    granted = end_of_local_day(D(2026, 9, 29))  # the lead unit grants another date
    (dec,) = sim.ok(c.DecideExtension(actor="lead.head", node="N1", approve=True,
                                      granted_due=D(2026, 9, 29), reason="同意"))
    assert isinstance(dec, ev.ExtensionDecided)
    assert (dec.original_due, dec.previous_due, dec.granted_due) == (due, due, granted)
    node = sim.state.node("N1")
    assert node is not None
    assert (node.original_due, node.due, node.cycle, node.extensions_granted) == (due, granted, 1, 1)
    sim.run_out()
    got = fired(sim.events)
    lad = main_ladder_of(spec)
    assert [(f.step, f.at, f.due_since) for f in got] == [
        (s.code, s.after.after(granted, spec.timezone)[0], granted) for s in lad.steps]
    assert all(f.step_key == f"node:N1:1:{f.step}" for f in got)
    # across 国庆: 3 working days after Sep 29 are Sep 30, Oct 8 and Oct 9
    assert local_date(got[1].at) == D(2026, 10, 9)


def test_a_refused_extension_keeps_the_rungs() -> None:
    due = DUES["ordinary"]
    spec = build_spec(due - dt.timedelta(days=10), dues=(due,))
    sim = Sim(spec, spec.started_at)
    sim.ok(c.RequestExtension(actor="unit.head", node="N1", reason="人手不足",
                              proposed_due=due + dt.timedelta(days=5)), due - dt.timedelta(days=1))
    (dec,) = sim.ok(c.DecideExtension(actor="leader", node="N1", approve=False, reason="不同意"))
    assert dec.granted_due is None  # type: ignore[attr-defined]
    assert sim.state.node("N1").due == due  # type: ignore[union-attr]
    sim.run_out()
    assert rungs_of(sim.events) == expected_rungs(spec)


def test_an_extension_must_be_requested_before_the_due_time() -> None:
    due = DUES["ordinary"]
    spec = build_spec(due - dt.timedelta(days=10), dues=(due,))
    sim = Sim(spec, spec.started_at)
    sim.run_until(due)
    refused = sim.send(c.RequestExtension(actor="unit.member", node="N1", reason="迟了",
                                          proposed_due=due + dt.timedelta(days=5)))
    assert isinstance(refused, c.Rejection) and refused.code == "too_late"


# --- the working-day calendar ---------------------------------------------------------------------

@pytest.mark.parametrize(("day", "working"), [
    (D(2026, 9, 20), True),    # Sunday, worked in exchange for 国庆
    (D(2026, 9, 25), False),   # 中秋 2026
    (D(2026, 9, 30), True),
    *((D(2026, 10, d), False) for d in range(1, 8)),  # 国庆 + 中秋 2026
    (D(2026, 10, 10), True),   # Saturday, worked
    (D(2026, 10, 11), False),
    (D(2026, 2, 14), True),    # Saturday, worked before 春节
    *((D(2026, 2, d), False) for d in range(15, 24)),  # 春节 2026
    (D(2026, 2, 24), True),
    (D(2026, 2, 28), True),    # Saturday, worked after 春节
    (D(2026, 3, 1), False),
])
def test_the_official_2026_calendar(day: D, working: bool) -> None:
    assert is_working_day(day) is working


@pytest.mark.parametrize(("start", "n", "day"), [
    (D(2026, 9, 18), 1, D(2026, 9, 20)),   # Fri → the worked Sunday
    (D(2026, 9, 30), 1, D(2026, 10, 8)),   # over the whole 国庆 break
    (D(2026, 9, 29), 3, D(2026, 10, 9)),
    (D(2026, 10, 9), 1, D(2026, 10, 10)),  # Fri → the worked Saturday
    (D(2026, 2, 13), 1, D(2026, 2, 14)),   # Fri → the worked Saturday
    (D(2026, 2, 14), 1, D(2026, 2, 24)),   # over the whole 春节 break
    (D(2026, 2, 27), 1, D(2026, 2, 28)),
    (D(2026, 2, 13), 3, D(2026, 2, 25)),
    (D(2026, 3, 20), 0, D(2026, 3, 20)),
])
def test_working_days_skip_holidays_and_count_worked_weekends(start: D, n: int, day: D) -> None:
    res = add_working_days(start, n)
    assert res.day == day
    assert res.estimated_years == ()


@pytest.mark.parametrize(("due_day", "order_day"), [
    (D(2026, 9, 30), D(2026, 10, 10)),  # Oct 8, 9, 10
    (D(2026, 2, 13), D(2026, 2, 25)),   # Feb 14, 24, 25
])
def test_a_working_day_rung_across_the_holidays(due_day: D, order_day: D) -> None:
    due = end_of_local_day(due_day)
    spec = build_spec(due - dt.timedelta(days=5), dues=(due,))
    sim = Sim(spec, spec.started_at)
    sim.run_until(due + dt.timedelta(days=30))
    order = next(f for f in fired(sim.events) if f.step == "order")
    assert order.at == end_of_local_day(order_day)
    assert order.calendar_estimated == ()


def test_an_unpublished_year_is_flagged_as_estimated() -> None:
    assert is_published(2026) and not is_published(2027)
    assert add_working_days(D(2026, 12, 30), 3).estimated_years == (2027,)
    # a plan with a working-day node in 2027
    ladder_set = ladders()
    plan = Plan(code="p27", title="2027", start=D(2027, 3, 1), units=UNITS, roster=ROSTER,
                tasks=(TaskDef(code="T", title="网格化", lead_unit="office", responsible=("v01",),
                               nodes=(NodeSpec(code="A", title="划分网格", working_days=5),
                                      NodeSpec(code="B", title="运行", due=D(2027, 3, 31)))),))
    (spec,) = resolve_plan(plan, ladder_set)
    assert [n.calendar_estimated for n in spec.nodes] == [(2027,), ()]
    assert estimated_calendar_years([spec]) == [2027]
    # and a rung counted in 2027's working days says so
    sim = Sim(spec, spec.started_at)
    sim.run_until(spec.nodes[0].due + dt.timedelta(days=8))
    got = {f.step: f for f in fired(sim.events) if f.target == "A"}
    assert got["remind"].calendar_estimated == ()  # no working days counted
    assert got["order"].calendar_estimated == (2027,)
    # a published year is not flagged
    plan26 = plan.model_copy(update={"start": D(2026, 3, 2), "tasks": (plan.tasks[0].model_copy(
        update={"nodes": (NodeSpec(code="A", title="划分网格", working_days=5),)}),)})
    (spec26,) = resolve_plan(plan26, ladder_set)
    assert spec26.nodes[0].calendar_estimated == ()
    assert estimated_calendar_years([spec26]) == []


def test_offsets_count_from_the_local_day_of_an_end_of_day_deadline() -> None:
    due = end_of_local_day(D(2026, 9, 30))  # 2026-10-01 00:00 local: still "Sep 30"
    assert local_date(due) == D(2026, 9, 30)
    assert Offset(working_days=1).after(due)[0] == end_of_local_day(D(2026, 10, 8))
    assert Offset(days=1, hours=2).after(due)[0] == due + dt.timedelta(days=1, hours=2)
    with pytest.raises(ValueError, match="working days"):
        Offset(working_days=1).before(due)


def test_the_false_report_ladder_runs_from_the_inspection() -> None:
    t0 = local(2026, 9, 21, 9)
    spec = build_spec(t0, due_days=(30,))
    sim = Sim(spec, t0)
    t = local(2026, 9, 24, 15)
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), t)
    sim.ok(c.RecordInspection(actor="supervisor", inspection_id="i1", visited_at=t,
                              place="东城镇一村", nodes=("N1",), outcome="不达标"))
    sim.run_until(local(2026, 10, 31))
    got = [f for f in fired(sim.events) if f.target_kind == "false_report"]
    assert [(f.step, f.at, f.ladder) for f in got] == [
        ("notice", t, "false-report"),
        # 5 working days after Thu Sep 24: (25 中秋) Sep 28, 29, 30, Oct 8, 9
        ("accountability", local(2026, 10, 9, 15), "false-report"),
    ]


def test_the_rectification_ladder_runs_from_the_finding_deadline() -> None:
    t0 = local(2026, 9, 21, 9)
    spec = build_spec(t0, due_days=(60,))
    sim = Sim(spec, t0)
    t = local(2026, 9, 24, 10)
    out = sim.ok(c.RecordInspection(
        actor="supervisor", inspection_id="i1", visited_at=t, place="东城镇一村", outcome="不达标",
        findings=(c.FindingInput(severity="严重", description="网格员未到岗"),)), t)
    (order,) = of_type(out, ev.RectificationOrdered)
    # 3 working days after Thu Sep 24: Sep 25 is 中秋, then Sep 28, 29, 30
    assert order.deadline == local(2026, 9, 30, 10)
    sim.run_until(local(2026, 10, 31))
    got = [f for f in fired(sim.events) if f.target_kind == "finding"]
    rect = ladders()["rectification"]
    assert [(f.step, f.at) for f in got] == [
        (s.code, s.after.after(order.deadline, spec.timezone)[0]) for s in rect.steps]
    assert all(f.step_key == f"finding:i1-1:0:{f.step}" for f in got)
    assert main_ladder(sim.state).code == "deadline-lights"
