"""Who may do what: every command × every role in the roster (and a stranger).

For each command a task state is built in which the command, when authorised, succeeds (a
claimed node to accept, a pending extension to decide, a reported finding to verify, a task
completed and drawn for 回头看 to recheck). Allowed actors must get events; everyone else a
refusal with code "unauthorised", a reason that says why, and an untouched state. A second
matrix uses states in which the command fails on its merits: an allowed actor then gets that
reason, never "unauthorised" — and a disallowed one learns nothing about the task's state.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from domain import commands as c
from domain import events as ev
from domain.authz import authorise
from domain.calendar import COMPAT_CALENDAR, calendar_from_days
from domain.decide import decide, reject
from domain.evolve import evolve
from domain.plan import Member
from domain.state import TaskState
from tests.domain_strategies import SHA, Sim, build_spec, local
from tests.scenario import ROSTER

T0 = local(2026, 3, 2, 9)
DAY = dt.timedelta(days=1)
NOW = T0 + 2 * DAY
SPEC = build_spec(T0, due_days=(10, 20), recheck_percent=100)
DUE = SPEC.nodes[0].due
ACTORS = (*(m.actor for m in ROSTER), "stranger")

UNIT = {"unit.member", "unit.head"}
ACCEPTORS = {"supervisor", "lead.head", "lead.member"}
ALLOWED: dict[str, set[str]] = {
    "acknowledge": UNIT, "progress": UNIT, "claim": UNIT, "request_extension": UNIT,
    "report_rectification": UNIT, "sign_notice": UNIT,
    "accept": ACCEPTORS, "reject_claim": ACCEPTORS,
    "decide_extension": {"lead.head", "leader"},
    "inspect": {"supervisor"}, "verify_rectification": {"supervisor"}, "recheck": {"supervisor"},
    "update_calendar": {"office.staff"},
}
# The task's calendar with 2027's notice published (two extra days off, one 调休 Saturday).
_BASE = COMPAT_CALENDAR.restricted(2026, 2040)
NEW_CALENDAR = calendar_from_days(
    source="test 2027 notice", first_year=2026, last_year=2040, published=(*_BASE.published, 2027),
    days_off=(*_BASE.days_off, dt.date(2027, 2, 11), dt.date(2027, 2, 12)),
    working_weekends=(*_BASE.working_weekends, dt.date(2027, 2, 20)))


def test_the_matrix_covers_every_command_and_role() -> None:
    assert set(ALLOWED) == set(c.COMMANDS)
    assert {m.roles for m in ROSTER} >= {("member",), ("head",), ("lead", "head"),
                                         ("supervisor",), ("auditor",), ("leader",), ("office",)}
    # auditors never command; office staff only bring a task's working-day calendar up to date
    assert not any("auditor" in allowed for allowed in ALLOWED.values())
    assert {n for n, allowed in ALLOWED.items() if "office.staff" in allowed} == {"update_calendar"}


# --- commands, and states in which each would succeed ------------------------------------------

def command(name: str, actor: str) -> c.Command:
    fields: dict[str, object] = {
        "acknowledge": {"note": "收到"},
        "progress": {"percent": 40},
        "claim": {"node": "N1", "evidence": (ev.Evidence(sha256=SHA, name="公示.jpg"),)},
        "accept": {"node": "N1"},
        "reject_claim": {"node": "N1", "reason": "公示照片不清"},
        "request_extension": {"node": "N1", "reason": "村民代表会议推迟",
                              "proposed_due": DUE + 5 * DAY},
        "decide_extension": {"node": "N1", "approve": True},
        "inspect": {"inspection_id": "i9", "visited_at": NOW - dt.timedelta(hours=2),
                    "place": "东城镇一村", "outcome": "基本达标",
                    "findings": (c.FindingInput(severity="一般", description="台账不全"),)},
        "report_rectification": {"finding_id": "F1", "note": "已补齐"},
        "verify_rectification": {"finding_id": "F1", "passed": True},
        "recheck": {"visited_at": NOW, "passed": True},
        "update_calendar": {"calendar": NEW_CALENDAR, "note": "2027年放假安排已公布"},
        "sign_notice": {"step_key": REMINDER, "note": "已收悉"},
    }[name]  # type: ignore[assignment]
    return c.COMMANDS[name](actor=actor, **fields)  # type: ignore[arg-type]


def fresh() -> Sim:
    return Sim(SPEC, T0)


def claimed() -> Sim:
    sim = fresh()
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), T0 + DAY)
    return sim


def pending_extension() -> Sim:
    sim = fresh()
    sim.ok(c.RequestExtension(actor="unit.head", node="N1", reason="台风",
                              proposed_due=DUE + 3 * DAY), T0 + DAY)
    return sim


def with_finding(reported: bool) -> Callable[[], Sim]:
    def build() -> Sim:
        sim = fresh()
        sim.ok(c.RecordInspection(actor="supervisor", inspection_id="i1", visited_at=T0 + DAY,
                                  place="东城镇一村", outcome="不达标",
                                  findings=(c.FindingInput(finding_id="F1", severity="较重",
                                                           description="网格员未到岗"),)), T0 + DAY)
        if reported:
            sim.ok(c.ReportRectification(actor="unit.member", finding_id="F1"))
        return sim
    return build


def drawn_for_recheck() -> Sim:
    sim = fresh()
    for n in ("N1", "N2"):
        sim.ok(c.ClaimNode(actor="unit.member", node=n), T0 + DAY)
        sim.ok(c.AcceptNode(actor="supervisor", node=n))
    sim.tick(draw=0)
    assert sim.state.status == "completed" and sim.state.recheck_due is not None
    return sim


REMINDER = "node:N1:0:remind"  # the first rung of N1, fired when it falls due


def reminded() -> Sim:
    sim = fresh()
    sim.tick(DUE + DAY)
    assert sim.state.notice(REMINDER) is not None
    return sim


READY: dict[str, Callable[[], Sim]] = {
    "acknowledge": fresh, "progress": fresh, "claim": fresh, "request_extension": fresh,
    "inspect": fresh, "accept": claimed, "reject_claim": claimed,
    "decide_extension": pending_extension, "report_rectification": with_finding(False),
    "verify_rectification": with_finding(True), "recheck": drawn_for_recheck,
    "update_calendar": fresh, "sign_notice": reminded,
}


# --- the reasons a refusal must give ------------------------------------------------------------

def expected_reason(name: str, actor: str) -> list[str]:
    cls = c.COMMANDS[name].__name__
    if actor in ("stranger", "other.unit"):  # not on this task's roster at all
        return [repr(actor), "not on this plan's roster"]
    if name in ("acknowledge", "progress", "claim", "request_extension", "report_rectification",
                "sign_notice"):
        return [cls, "only members of 东城镇一村 (v01)", actor]
    if name == "update_calendar":
        return [cls, "only the office", actor]
    if actor in UNIT:
        return [cls, "may not check its own work", actor]
    if name in ("accept", "reject_claim"):
        return [cls, "only a supervisor (督查组), or the lead unit office's lead, head or member",
                f"{actor} belongs to"]
    if name == "decide_extension":
        return [cls, "lead/head or a leader", f"{actor} belongs to"]
    return [cls, "only a supervisor", actor]


def assert_refused(state: TaskState, cmd: c.Command, name: str, now: dt.datetime = NOW) -> None:
    before = state.model_dump()
    result = decide(state, cmd, now)
    assert isinstance(result, c.Rejection), f"{cmd.actor} was allowed to {name}"
    assert result.code == "unauthorised", result
    for part in expected_reason(name, cmd.actor):
        assert part in result.reason, (part, result.reason)
    assert authorise(state.spec, cmd) == result
    assert state.model_dump() == before  # decide never mutates
    rec = reject(state, name, cmd.actor, result, cmd.model_dump_json(), now)
    after = evolve(state, rec)
    assert after.model_dump(exclude={"rejected_commands", "last_seq", "last_at"}) == \
        state.model_dump(exclude={"rejected_commands", "last_seq", "last_at"})
    assert after.rejected_commands == state.rejected_commands + 1


# --- the matrix -----------------------------------------------------------------------------------

CASES = [(name, actor) for name in ALLOWED for actor in ACTORS]


@pytest.mark.parametrize(("name", "actor"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_authorisation_matrix(name: str, actor: str) -> None:
    sim = READY[name]()
    state = sim.state
    cmd = command(name, actor)
    if actor in ALLOWED[name]:
        result = decide(state, cmd, NOW)
        assert not isinstance(result, c.Rejection), result
        assert result and all(e.actor == actor for e in result)
        sim.emit(result)  # and the events fold
    else:
        assert_refused(state, cmd, name)


# The same commands in a state where they fail on their merits.
def acknowledged() -> Sim:
    sim = fresh()
    sim.ok(c.Acknowledge(actor="unit.head"), T0 + DAY)
    sim.ok(c.ReportProgress(actor="unit.head", percent=60))
    return sim


def overdue() -> Sim:
    sim = fresh()
    sim.tick(DUE + DAY)
    return sim


def calendar_updated() -> Sim:
    sim = fresh()
    sim.ok(c.UpdateCalendar(actor="office.staff", calendar=NEW_CALENDAR), T0 + DAY)
    return sim


WRONG_STATE: dict[str, tuple[Callable[[], Sim], str]] = {
    "acknowledge": (acknowledged, "duplicate"),
    "progress": (acknowledged, "not_allowed"),  # 40 < 60: progress does not go down
    "claim": (claimed, "duplicate"),
    "accept": (fresh, "not_allowed"),
    "reject_claim": (fresh, "not_allowed"),
    "request_extension": (overdue, "too_late"),
    "decide_extension": (fresh, "not_allowed"),
    "inspect": (with_finding(False), "duplicate"),  # i9 is new, but its finding id is taken
    "report_rectification": (fresh, "unknown_finding"),
    "verify_rectification": (with_finding(False), "not_allowed"),
    "recheck": (claimed, "not_allowed"),
    "update_calendar": (calendar_updated, "duplicate"),
    "sign_notice": (fresh, "unknown_notice"),
}


def test_every_command_has_a_wrong_state() -> None:
    assert set(WRONG_STATE) == set(c.COMMANDS)


@pytest.mark.parametrize(("name", "actor"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_authorisation_comes_before_the_task_state(name: str, actor: str) -> None:
    build, code = WRONG_STATE[name]
    sim = build()
    state, now = sim.state, max(NOW, sim.now)
    cmd = command(name, actor)
    if name == "inspect":
        cmd = cmd.model_copy(update={"findings": (c.FindingInput(
            finding_id="F1", severity="一般", description="台账不全"),)})
    if actor in ALLOWED[name]:
        before = state.model_dump()
        result = decide(state, cmd, now)
        assert isinstance(result, c.Rejection) and result.code == code, result
        assert state.model_dump() == before
    else:
        assert_refused(state, cmd, name, now)


def test_a_closed_task_refuses_everyone_as_closed() -> None:
    sim = drawn_for_recheck()
    sim.ok(c.RecordRecheck(actor="supervisor", visited_at=NOW, passed=True), NOW)
    assert sim.state.status == "closed"
    for name in ALLOWED:
        for actor in ACTORS:
            r = decide(sim.state, command(name, actor), NOW)
            assert isinstance(r, c.Rejection) and r.code == "closed"


# --- roles beyond the test roster -----------------------------------------------------------------

EXTRA = (
    Member(actor="v01.inspector", name="村里的督查员", unit="v01", roles=("supervisor",)),
    Member(actor="jiwei", name="纪委", unit="office", roles=("discipline",)),
    Member(actor="lead.only", name="牵头处长", unit="office", roles=("lead",)),
    Member(actor="town.head", name="镇长", unit="town1", roles=("head",)),
)


@pytest.mark.parametrize(("actor", "name", "allowed"), [
    ("v01.inspector", "inspect", False),   # a supervisor may not inspect their own unit
    ("v01.inspector", "claim", False),     # and is no member of it for unit commands
    ("jiwei", "inspect", False), ("jiwei", "accept", False), ("jiwei", "decide_extension", False),
    ("lead.only", "decide_extension", True), ("lead.only", "accept", True),
    ("lead.only", "claim", False),
    ("town.head", "claim", False),         # the parent township is not the responsible unit
])
def test_roles_beyond_the_test_roster(actor: str, name: str, allowed: bool) -> None:
    spec = SPEC.model_copy(update={"roster": (*SPEC.roster, *EXTRA)})
    state = READY[name]().state.model_copy(update={"spec": spec})
    cmd = command(name, actor)
    result = decide(state, cmd, NOW)
    if allowed:
        assert not isinstance(result, c.Rejection), result
    else:
        assert isinstance(result, c.Rejection) and result.code == "unauthorised", result
        assert actor in result.reason or c.COMMANDS[name].__name__ in result.reason
