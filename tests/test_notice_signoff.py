"""签收 and the missed 反馈时限: a notice signed for, answered, or recorded missed at its instant.

Domain checks without a server (the rule, property-based), then the workflow on the
time-skipping server: the miss is recorded at exactly the notice's 反馈时限, the store's notice
row shows both, and the next rung's 督办单 names the missed one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from domain import commands as c
from domain import events as ev
from domain.decide import decide, tick
from domain.rules import next_wakeup
from tests.conftest import WORKFLOW_QUEUE as QUEUE
from tests.domain_strategies import Sim, build_spec, local
from tests.scenario import make_spec
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

T0 = local(2026, 3, 2, 9)
HOUR = dt.timedelta(hours=1)


def fired_reminder() -> tuple[Sim, ev.EscalationFired]:
    """A task whose first node is due: the reminder (提醒, 反馈时限 one working day) fired."""
    sim = Sim(build_spec(T0, due_days=(5, 20)), T0)
    sim.tick(sim.spec.nodes[0].due + HOUR)
    [remind] = [e for e in sim.events if isinstance(e, ev.EscalationFired)]
    assert remind.reply_by is not None
    return sim, remind


def test_the_unit_signs_for_a_notice_once_and_only_its_own() -> None:
    sim, remind = fired_reminder()
    unknown = decide(sim.state, c.SignNotice(actor="unit.member", step_key="nope"), sim.now)
    assert isinstance(unknown, c.Rejection) and unknown.code == "unknown_notice"
    assert remind.step_key in unknown.reason  # it lists the notices issued
    other = decide(sim.state, c.SignNotice(actor="supervisor", step_key=remind.step_key), sim.now)
    assert isinstance(other, c.Rejection) and other.code == "unauthorised"
    [signed] = sim.ok(c.SignNotice(actor="unit.member", step_key=remind.step_key, note="已收悉"))
    assert isinstance(signed, ev.NoticeSignedFor) and signed.note == "已收悉"
    again = decide(sim.state, c.SignNotice(actor="unit.head", step_key=remind.step_key), sim.now)
    assert isinstance(again, c.Rejection) and again.code == "duplicate"
    notice = sim.state.notice(remind.step_key)
    assert notice is not None and notice.signed_by == "unit.member"


def test_an_unanswered_notice_is_missed_at_its_reply_by_and_not_before() -> None:
    sim, remind = fired_reminder()
    assert remind.reply_by is not None
    assert next_wakeup(sim.state, sim.now) == min(remind.reply_by, next_wakeup(
        sim.state, sim.now, reply_missed=False) or remind.reply_by)
    just_before = remind.reply_by - dt.timedelta(seconds=1)
    assert not [e for e in tick(sim.state, just_before) if isinstance(e, ev.NoticeReplyMissed)]
    missed = [e for e in sim.tick(remind.reply_by) if isinstance(e, ev.NoticeReplyMissed)]
    assert [(m.step_key, m.at, m.reply_by, m.issued_at) for m in missed] == [
        (remind.step_key, remind.reply_by, remind.reply_by, remind.at)]
    assert sim.state.missed_replies == 1
    assert not [e for e in sim.tick(remind.reply_by + HOUR) if isinstance(e, ev.NoticeReplyMissed)]
    # histories from before 签收 existed never record one
    fresh, _ = fired_reminder()
    assert not [e for e in tick(fresh.state, remind.reply_by, reply_missed=False)
                if isinstance(e, ev.NoticeReplyMissed)]


@settings(max_examples=40, deadline=None)
@given(answer=st.sampled_from(["sign", "progress", "claim", "extension", "none"]),
       minutes=st.integers(1, 60 * 20))
def test_signing_or_a_report_before_the_reply_by_prevents_the_miss(answer: str,
                                                                   minutes: int) -> None:
    sim, remind = fired_reminder()
    assert remind.reply_by is not None
    when = min(sim.now + dt.timedelta(minutes=minutes), remind.reply_by - dt.timedelta(seconds=1))
    cmd: c.Command | None = {
        "sign": c.SignNotice(actor="unit.member", step_key=remind.step_key),
        "progress": c.ReportProgress(actor="unit.member", percent=10),
        "claim": c.ClaimNode(actor="unit.member", node="N1"),
        "extension": c.RequestExtension(actor="unit.member", node="N2", reason="外出",
                                        proposed_due=sim.spec.nodes[1].due.date()),
        "none": None,
    }[answer]
    if cmd is not None:
        sim.ok(cmd, when)
    sim.tick(remind.reply_by + HOUR)
    missed = [e for e in sim.events if isinstance(e, ev.NoticeReplyMissed)]
    assert bool(missed) == (answer == "none")


# --- on the server ------------------------------------------------------------------------

async def test_the_workflow_records_signing_and_the_miss_at_their_exact_times(
        ts_env: WorkflowEnvironment, worker: None, wf_store: Any) -> None:
    now = await ts_env.get_current_time()
    spec = make_spec(now, due_days=(5,), progress=(100,), plan_code=f"n{uuid.uuid4().hex[:8]}")
    handle = await ts_env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id, task_queue=QUEUE,
        search_attributes=initial_search_attributes(spec))
    await ts_env.sleep(spec.nodes[0].due - now + HOUR)
    state = await handle.query("state")
    [remind] = state["notices"]
    await handle.execute_update("sign_notice", {"actor": "unit.member",
                                                "step_key": remind["step_key"]})
    try:
        await handle.execute_update("sign_notice", {"actor": "unit.member",
                                                    "step_key": remind["step_key"]})
        raise AssertionError("a second signing was accepted")
    except WorkflowUpdateFailedError as exc:
        assert "signed for" in str(exc.cause)
    # the 督办单 (order: 3 working days on, 反馈时限 2 more) is left unanswered; the 约谈 after it
    await ts_env.sleep(dt.timedelta(days=20))
    events: list[dict[str, Any]] = await handle.query("events")
    fired = {e["step"]: e for e in events if e["type"] == "EscalationFired"}
    missed = [e for e in events if e["type"] == "NoticeReplyMissed"]
    assert [m["step_key"] for m in missed][:2] == [fired["order"]["step_key"],
                                                   fired["talk"]["step_key"]]
    for m in missed:  # recorded by the clock's timer for its notice's 反馈时限 (that instant,
        # to the timer's milliseconds), and naming exactly that 反馈时限
        assert m["reply_by"] == fired[m["step_key"].split(":")[-1]]["reply_by"]
        late = dt.datetime.fromisoformat(m["at"]) - dt.datetime.fromisoformat(m["reply_by"])
        assert dt.timedelta(0) <= late < dt.timedelta(seconds=1), late
        assert m["actor"] == "system"
    assert remind["step_key"] not in [m["step_key"] for m in missed]  # signed for in time
    # the store shows both on the notices, and the next 督办单 names the missed one
    for _ in range(400):  # until everything decided is recorded (bounded)
        state = await handle.query("state")
        if state["recorded_seq"] == state["last_seq"]:
            break
        await asyncio.sleep(0.05)
    rows = {n["step_key"]: n for n in wf_store.list_notices(spec.task_id)}
    assert rows[remind["step_key"]]["signed_by"] == "unit.member"
    assert rows[fired["order"]["step_key"]]["reply_missed_at"] is not None
    assert fired["order"]["step_key"] in rows[fired["talk"]["step_key"]]["document"]
    assert wf_store.read_model_rows(spec.task_id)["task"]["missed_replies"] >= 2


def test_a_notice_fired_past_its_reply_by_is_missed_in_the_same_tick() -> None:
    """A task loaded late (its rungs fire at once, their 反馈时限 already gone): no timer would
    wake for a past time, so the miss is recorded with the rung, not at the next wake-up."""
    sim = Sim(build_spec(T0, due_days=(5, 60)), T0)
    late = sim.spec.nodes[0].due + dt.timedelta(days=4)
    events = sim.tick(late)
    fired = [e for e in events if isinstance(e, ev.EscalationFired)]
    missed = {e.step_key for e in events if isinstance(e, ev.NoticeReplyMissed)}
    gone = {e.step_key for e in fired if e.reply_by is not None and e.reply_by <= late}
    assert gone and missed == gone
