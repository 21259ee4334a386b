"""反馈时限 (reply_by) on a notice: counted from the rung's rule time, not from the instant the
rung happened to fire, and a working-day window ends at the end of its last working day.

Dates on the 2026 official calendar (Asia/Shanghai): 2026-09-20 (Sunday) is a 调休 working day,
国庆 is 10-01..10-07, 10-10 (Saturday) is a working day.
"""

from __future__ import annotations

import datetime as dt

from activities.notices import render_notice
from domain import events as ev
from domain.calendar import end_of_local_day, local_date
from domain.decide import assign, tick
from domain.evolve import evolve
from domain.projection import notice_context
from domain.state import TaskState
from tests.domain_strategies import build_spec, local

D = dt.date
MS14 = dt.timedelta(milliseconds=14)


def fire_first_rung(due_day: dt.date, at: dt.datetime, *, rule_time: bool = True,
                    ladder: str = "deadline-lights") -> tuple[TaskState, ev.EscalationFired]:
    due = end_of_local_day(due_day)
    spec = build_spec(due - dt.timedelta(days=10), dues=(due,), ladder=ladder)
    state = evolve(None, assign(spec, spec.started_at))
    fired = None
    for e in tick(state, at, 99, reply_by_rule_time=rule_time):
        state = evolve(state, e)
        if isinstance(e, ev.EscalationFired) and fired is None:
            fired = e
    assert fired is not None
    return state, fired


def test_reply_window_ends_at_the_end_of_the_next_working_day_counted_from_the_rule_time() -> None:
    # node due Friday 09-18; 催办 fires 14 ms after its rule time, 09-19 00:00 (a Saturday)
    _, f = fire_first_rung(D(2026, 9, 18), local(2026, 9, 19) + MS14)
    assert f.step == "remind" and f.required_at == local(2026, 9, 19)
    # the next working day is Sunday 09-20 (调休), and the reply is due at its end
    assert f.reply_by == end_of_local_day(D(2026, 9, 20)) == local(2026, 9, 21)


def test_reply_window_across_guoqing_ends_at_the_end_of_the_first_working_day_after_it() -> None:
    _, f = fire_first_rung(D(2026, 9, 30), local(2026, 10, 1) + MS14)
    assert f.reply_by == end_of_local_day(D(2026, 10, 8)) == local(2026, 10, 9)


def test_a_rung_that_fires_late_gets_no_longer_window() -> None:
    # the worker was down: 催办 for a node due Monday 09-14 fires at 09:30 on 09-15
    _, f = fire_first_rung(D(2026, 9, 14), local(2026, 9, 15, 9, 30))
    assert f.required_at == local(2026, 9, 15)
    assert f.reply_by == end_of_local_day(D(2026, 9, 15))


def test_later_rungs_count_from_their_own_rule_time() -> None:
    due = end_of_local_day(D(2026, 9, 18))
    spec = build_spec(due - dt.timedelta(days=10), dues=(due,))
    state = evolve(None, assign(spec, spec.started_at))
    fired: list[ev.EscalationFired] = []
    now = local(2026, 11, 30, 10)  # long after: every rung of the ladder fires in one tick
    for e in tick(state, now, 99, reply_by_rule_time=True):
        state = evolve(state, e)
        if isinstance(e, ev.EscalationFired):
            fired.append(e)
    cal = spec.working_calendar
    steps = {s.code: s for s in spec.ladders[spec.ladder].steps}
    assert [f.step for f in fired] == list(steps)
    for f in fired:
        within = steps[f.step].reply_within
        if within is None:
            assert f.reply_by is None
            continue
        last = cal.add_working_days(local_date(f.required_at), within.working_days).day
        assert f.reply_by == end_of_local_day(last), f.step
    order = next(f for f in fired if f.step == "order")
    # 督办单: 3 working days after 09-18 → end of 09-22; reply within 2 → end of 09-24
    assert order.required_at == local(2026, 9, 23)
    assert order.reply_by == local(2026, 9, 25)


def test_a_window_in_days_or_minutes_is_added_to_the_rule_time() -> None:
    _, f = fire_first_rung(D(2026, 9, 18), local(2026, 9, 19, 0, 3), ladder="demo-minutes")
    assert f.step == "remind"
    assert f.reply_by == f.required_at + dt.timedelta(minutes=2)


def test_histories_before_the_rule_change_keep_the_old_reply_by() -> None:
    _, f = fire_first_rung(D(2026, 9, 18), local(2026, 9, 19) + MS14, rule_time=False)
    assert f.reply_by == local(2026, 9, 20) + MS14
    _, g = fire_first_rung(D(2026, 9, 30), local(2026, 10, 1) + MS14, rule_time=False)
    assert g.reply_by == local(2026, 10, 8) + MS14


def test_the_notice_states_the_end_of_the_working_day() -> None:
    state, f = fire_first_rung(D(2026, 9, 18), local(2026, 9, 19) + MS14)
    doc = render_notice(notice_context(state, f), ev.event_json(f)).document
    assert "**反馈时限**: 2026-09-20（星期日）24:00前" in doc
    state, g = fire_first_rung(D(2026, 9, 30), local(2026, 10, 1) + MS14)
    doc = render_notice(notice_context(state, g), ev.event_json(g)).document
    assert "**反馈时限**: 2026-10-08（星期四）24:00前" in doc
