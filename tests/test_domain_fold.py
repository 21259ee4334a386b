"""Properties of the fold: random (time advance, command) runs through `tick`/`decide`/`evolve`.

The simulator (tests/domain_strategies.py) plays the workflow's part without Temporal. After
every tick and every command the invariants below are checked; at the end the whole record is
folded again from scratch and compared with the live state.
"""

from __future__ import annotations

import datetime as dt
import os

from hypothesis import HealthCheck, event, given, settings

from domain import commands as c
from domain import events as ev
from domain.decide import decide
from domain.evolve import fold
from domain.projection import project
from domain.rules import due_rungs, light_at, next_wakeup
from domain.state import TaskState
from tests.domain_strategies import (
    Scenario,
    Sim,
    build_spec,
    fired,
    floats_in,
    local,
    name_of,
    of_type,
    scenarios,
)

US = dt.timedelta(microseconds=1)
FAR = dt.timedelta(days=400)
# more for a soak run: DUBAN_PROPERTY_EXAMPLES=5000 pytest tests/test_domain_fold.py
EXAMPLES = int(os.environ.get("DUBAN_PROPERTY_EXAMPLES", "250"))
BOOKKEEPING = {"rejected_commands", "last_seq", "last_at"}

# Status moves the fold may make. Anything else (e.g. back to "acknowledged" once work began)
# is a bug.
_MOVES = {
    ("assigned", "acknowledged"),
    ("assigned", "in_progress"),
    ("acknowledged", "in_progress"),
    ("in_progress", "completed"),
    ("completed", "in_progress"),
    ("completed", "closed"),
}


def _closure(moves: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Several events (a tick, a decision) may make several moves at once."""
    out = set(moves)
    while True:
        more = {(a, d) for a, b in out for c_, d in out if b == c_} - out
        if not more:
            return out
        out |= more


ALLOWED_MOVES = _closure(_MOVES)


def max_level(state: TaskState) -> int:
    return max(s.level for lad in state.spec.ladders.values() for s in lad.steps)


def check_after_tick(state: TaskState, now: dt.datetime) -> None:
    """The clock has had its say at `now`: nothing is left due, the light is current, and
    nothing changes by time alone before the next wake-up."""
    assert due_rungs(state, now) == [], "a rung due at the tick was left unfired"
    if state.status != "closed":
        assert state.light == light_at(state, now)[0]
    wake = next_wakeup(state, now)
    assert wake is None or wake > now
    probes = (
        [now + US, now + FAR] if wake is None else [now + US, now + (wake - now) / 2, wake - US]
    )
    for t in probes:
        if t <= now or (wake is not None and t >= wake):
            continue
        assert due_rungs(state, t) == [], f"a rung is due at {t}, before the wake-up {wake}"
        if state.status != "closed":
            assert light_at(state, t)[0] == state.light, f"light changes at {t}, before {wake}"
    assert 0 <= state.level <= max_level(state)


def check_after_command(state: TaskState, now: dt.datetime) -> None:
    """A command may make rungs due at once (e.g. a claim sent back after the due time): the
    workflow ticks right after it. When it did not, no rung may become due before the next
    wake-up."""
    wake = next_wakeup(state, now)
    assert wake is None or wake > now
    if due_rungs(state, now):
        return
    end = (wake - US) if wake is not None else now + FAR
    if end > now:
        assert due_rungs(state, end) == [], f"a rung is due before the wake-up {wake}"


def without_bookkeeping(state: TaskState) -> dict[str, object]:
    return state.model_dump(exclude=BOOKKEEPING)


def check_status_move(before: str, after: str) -> None:
    assert before == after or (before, after) in ALLOWED_MOVES, f"status {before} -> {after}"


def send_and_check(sim: Sim, cmd: c.Command, false_reported: set[tuple[str, int]]) -> None:
    prior = sim.state
    result = decide(prior, cmd, sim.now)
    assert decide(prior, cmd, sim.now) == result, "decide is not deterministic"
    sent = sim.send(cmd)
    if isinstance(result, c.Rejection):
        assert sent == result
        assert result.reason
        rec = sim.events[-1]
        assert isinstance(rec, ev.CommandRejected)
        assert (rec.command, rec.code, rec.actor) == (name_of(cmd), result.code, cmd.actor)
        assert without_bookkeeping(sim.state) == without_bookkeeping(prior)
        assert sim.state.rejected_commands == prior.rejected_commands + 1
        assert sim.state.last_seq == prior.last_seq + 1
        assert sim.state.last_at == sim.now
    else:
        assert result, "an accepted command must record at least one event"
        assert all(e.actor == cmd.actor and e.at == sim.now for e in result)
        check_status_move(prior.status, sim.state.status)
        for e in of_type(result, ev.FalseReportFound):
            n = sim.state.node(e.node)
            assert n is not None
            false_reported.add((e.node, n.cycle))
    check_after_command(sim.state, sim.now)


def run(scn: Scenario) -> Sim:
    sim = Sim(scn.spec, scn.start)
    false_reported: set[tuple[str, int]] = set()
    for step in scn.steps:
        target = sim.now + step.advance
        if scn.follow_wakeups:
            for _ in range(500):
                wake = next_wakeup(sim.state, sim.now)
                if wake is None or wake > target:
                    break
                before = sim.state.status
                sim.tick(wake, step.draw)
                check_status_move(before, sim.state.status)
                check_after_tick(sim.state, sim.now)
            else:
                raise AssertionError("wake-ups do not make progress")
        before = sim.state.status
        sim.tick(target, step.draw)
        check_status_move(before, sim.state.status)
        check_after_tick(sim.state, sim.now)
        for template in step.commands:
            send_and_check(sim, template.build(sim.now), false_reported)
        if step.commands:
            # as the workflow does: once commands came in, the clock has its say again at once
            before = sim.state.status
            sim.tick(sim.now, step.draw)
            check_status_move(before, sim.state.status)
            check_after_tick(sim.state, sim.now)
    return sim


def check_record(sim: Sim, follow_wakeups: bool) -> None:
    events = sim.events
    # the fold is deterministic: the stored record alone rebuilds the live state
    rebuilt = fold(events)
    assert rebuilt == sim.state
    assert project(rebuilt) == project(sim.state)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.task_id for e in events} == {sim.spec.task_id}
    assert all(a.at <= b.at for a, b in zip(events, events[1:], strict=False))
    for e in events:
        data = ev.event_json(e)
        assert floats_in(data) == [], f"{type(e).__name__} holds floats"
        assert ev.parse_event(data) == e
    keys = [f.step_key for f in fired(events)]
    assert len(keys) == len(set(keys)), "a step_key fired twice"
    commanded = [
        e.at for e in events if e.actor != ev.SYSTEM and not isinstance(e, ev.CommandRejected)
    ]
    for f in fired(events):
        lad = sim.spec.ladders[f.ladder]
        assert f.level <= max(s.level for s in lad.steps)
        assert f.step in {s.code for s in lad.steps}
        assert f.due_since <= f.required_at <= f.at
        assert f.step_key.startswith(f"{f.target_kind}:{f.target}:")
        assert f.step_key.endswith(f":{f.step}")
        if follow_wakeups and f.at != f.required_at:
            # late only if a command made it due after its time (a claim sent back, a finding
            # sent back, an extension granted to a date already past, a false report)
            assert any(f.required_at <= t <= f.at for t in commanded), (
                f"{f.step_key} required at {f.required_at} fired late at {f.at}"
            )


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_runs_keep_every_invariant(scn: Scenario) -> None:
    sim = run(scn)
    check_record(sim, scn.follow_wakeups)
    accepted = {type(e).__name__ for e in sim.events if e.actor != ev.SYSTEM}
    for name in sorted(accepted | {f"status={sim.state.status}"}):
        event(name)
    if fired(sim.events):
        event("escalated")


@settings(
    max_examples=max(EXAMPLES // 5, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(scenarios(max_steps=6))
def test_folding_any_prefix_gives_the_state_at_that_point(scn: Scenario) -> None:
    """An auditor rebuilding "state as of seq k" gets exactly what the live task had then."""
    sim = Sim(scn.spec, scn.start)
    states = [sim.state]
    for step in scn.steps:
        sim.tick(sim.now + step.advance, step.draw)
        states.append(sim.state)
        for template in step.commands:
            sim.send(template.build(sim.now))
            states.append(sim.state)
    for s in states:
        assert fold(sim.events[: s.last_seq]) == s


# --- the known bugs, pinned --------------------------------------------------------------------

T0 = local(2026, 3, 2, 9)


def test_acknowledging_late_never_moves_status_back() -> None:
    sim = Sim(build_spec(T0, due_days=(10,), recheck_percent=100), T0)
    t = T0 + dt.timedelta(days=1)
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), t)
    sim.ok(c.AcceptNode(actor="supervisor", node="N1"))
    sim.tick(draw=0)
    assert sim.state.status == "completed"
    result = decide(sim.state, c.Acknowledge(actor="unit.member"), sim.now)
    if not isinstance(result, c.Rejection):
        sim.emit(result)
    assert sim.state.status == "completed"
    sim.tick(t + dt.timedelta(hours=1), draw=0)
    assert len(of_type(sim.events, ev.TaskCompleted)) == 1


def test_a_second_false_report_fires_under_new_step_keys() -> None:
    sim = Sim(build_spec(T0), T0)
    t = T0 + dt.timedelta(days=1)
    for i in (1, 2):
        sim.ok(c.ClaimNode(actor="unit.member", node="N1"), t)
        sim.ok(
            c.RecordInspection(
                actor="supervisor",
                inspection_id=f"i{i}",
                visited_at=t,
                place="东城镇一村",
                nodes=("N1",),
                outcome="不达标",
            )
        )
        t += dt.timedelta(hours=1)
        sim.tick(t)
    notices = [f for f in fired(sim.events) if f.target_kind == "false_report"]
    assert [f.step for f in notices] == ["notice", "notice"]
    assert len({f.step_key for f in notices}) == 2
