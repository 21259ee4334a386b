"""KeyTask on the time-skipping server: weeks of deadlines pass in milliseconds."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from infra.db.store import EventStore
from tests.conftest import WORKFLOW_QUEUE as QUEUE
from tests.scenario import make_spec
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

TIMER_SLACK = dt.timedelta(seconds=1)


def near(at: str, expected: dt.datetime) -> bool:
    return dt.timedelta(0) <= ts(at) - expected < TIMER_SLACK


async def start(env: WorkflowEnvironment, **kw: Any) -> tuple[WorkflowHandle[Any, Any], Any]:
    now = await env.get_current_time()
    spec = make_spec(now, plan_code=f"p{uuid.uuid4().hex[:8]}", **{
        k: v for k, v in kw.items() if k != "continue_after_events"})
    handle = await env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec, continue_after_events=kw.get("continue_after_events")),
        id=spec.task_id, task_queue=QUEUE, search_attributes=initial_search_attributes(spec))
    return handle, spec


async def events(handle: WorkflowHandle[Any, Any]) -> list[dict[str, Any]]:
    return list(await handle.query("events"))


def of_type(evts: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in evts if e["type"] in types]


def ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


async def update(handle: WorkflowHandle[Any, Any], name: str, **payload: Any) -> Any:
    return await handle.execute_update(name, payload)


async def test_task_done_on_time_escalates_nothing(ts_env: WorkflowEnvironment, worker: None,
                                                   wf_store: EventStore) -> None:
    handle, spec = await start(ts_env)
    await update(handle, "acknowledge", actor="unit.member")
    await ts_env.sleep(dt.timedelta(days=2))
    await update(handle, "progress", actor="unit.member", percent=40, note="摸底完成")
    await update(handle, "claim", actor="unit.member", node="N1")
    await update(handle, "accept", actor="supervisor", node="N1")
    await ts_env.sleep(dt.timedelta(days=8))
    await update(handle, "progress", actor="unit.member", percent=90)
    await update(handle, "claim", actor="unit.member", node="N2")
    await update(handle, "accept", actor="lead.head", node="N2")
    result = await handle.result()
    assert result["status"] == "closed"
    evts = [s.event for s in wf_store.load(spec.task_id)]
    assert not of_type(evts, "EscalationFired")
    assert [e["type"] for e in evts][-2:] == ["TaskCompleted", "TaskClosed"]
    assert of_type(evts, "TaskCompleted")[0]["on_time"] is True
    assert [e["seq"] for e in evts] == list(range(1, len(evts) + 1))


async def test_late_task_gets_every_rung_at_the_exact_time(ts_env: WorkflowEnvironment,
                                                           worker: None, wf_store: EventStore) -> None:
    handle, spec = await start(ts_env, due_days=(5,), progress=(100,))
    due = spec.nodes[0].due
    ladder = spec.ladders[spec.ladder]
    expected = {s.code: s.after.after(due, spec.timezone)[0] for s in ladder.steps}
    await ts_env.sleep(max(expected.values()) - await ts_env.get_current_time()
                       + dt.timedelta(hours=1))
    fired = of_type(await events(handle), "EscalationFired")
    assert [f["step"] for f in fired] == [s.code for s in ladder.steps]
    for f in fired:
        assert ts(f["required_at"]) == expected[f["step"]]
        # The durable timer fires at the instant the ladder names; the timer is armed when the
        # workflow task completes, so the recorded time may trail by that task's milliseconds.
        assert dt.timedelta(0) <= ts(f["at"]) - expected[f["step"]] < TIMER_SLACK, f["step"]
    state = await handle.query("state")
    assert state["light"] == "red" and state["level"] == 5
    notices = wf_store.list_notices(spec.task_id)
    assert sorted(n["step_key"] for n in notices) == sorted(f["step_key"] for f in fired)
    assert any("督办单" in n["document"] for n in notices)


async def test_light_turns_yellow_then_red(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, spec = await start(ts_env, due_days=(10,), progress=(0,))
    await update(handle, "acknowledge", actor="unit.member")
    due = spec.nodes[0].due
    yellow_at = main_ladder_of(spec).yellow_before.before(due)
    await ts_env.sleep(yellow_at - await ts_env.get_current_time() + dt.timedelta(minutes=1))
    assert (await handle.query("state"))["light"] == "yellow"
    await ts_env.sleep(due - await ts_env.get_current_time() + dt.timedelta(minutes=1))
    changes = of_type(await events(handle), "LightChanged")
    assert [c["light"] for c in changes] == ["yellow", "red"]
    assert near(changes[0]["at"], yellow_at) and near(changes[1]["at"], due)


def main_ladder_of(spec: Any) -> Any:
    return spec.ladders[spec.ladder]


async def test_approved_extension_moves_the_rungs(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, spec = await start(ts_env, due_days=(5,), progress=(100,))
    old_due = spec.nodes[0].due
    new_due = old_due + dt.timedelta(days=10)
    await update(handle, "request_extension", actor="unit.member", node="N1",
                 reason="村民代表会议推迟", proposed_due=(old_due + dt.timedelta(days=14)).isoformat())
    answer = await update(handle, "decide_extension", actor="lead.head", node="N1", approve=True,
                          granted_due=new_due.isoformat(), reason="同意延期10天")
    decided = answer["events"][0]
    assert ts(decided["original_due"]) == old_due and ts(decided["granted_due"]) == new_due
    await ts_env.sleep(old_due - await ts_env.get_current_time() + dt.timedelta(days=4))
    assert not of_type(await events(handle), "EscalationFired")
    await ts_env.sleep(new_due - await ts_env.get_current_time() + dt.timedelta(hours=1))
    fired = of_type(await events(handle), "EscalationFired")
    assert [f["step"] for f in fired] == ["remind"] and near(fired[0]["at"], new_due)


async def test_extension_after_due_time_is_refused(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, spec = await start(ts_env, due_days=(3,), progress=(100,))
    await ts_env.sleep(dt.timedelta(days=3, hours=1))
    before = await handle.query("state")
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, "request_extension", actor="unit.member", node="N1", reason="来不及",
                     proposed_due="2099-01-01")
    assert "before the node's due time" in str(info.value.cause)
    after = await handle.query("state")
    assert after["nodes"] == before["nodes"]
    rejected = of_type(await events(handle), "CommandRejected")
    assert rejected[-1]["code"] == "too_late" and rejected[-1]["actor"] == "unit.member"


async def test_invalid_update_is_rejected_with_reason(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, _ = await start(ts_env)
    before = await handle.query("state")
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, "progress", actor="unit.member", percent=150)
    assert "percent" in str(info.value.cause) and "100" in str(info.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, "no_such_command", actor="unit.member")
    assert "unknown command" in str(info.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, "accept", actor="unit.member", node="N1")
    assert "may not check its own work" in str(info.value.cause)
    after = await handle.query("state")
    assert after["progress"] == before["progress"] and after["nodes"] == before["nodes"]


async def test_hundred_malformed_signals_are_recorded_and_harmless(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore) -> None:
    handle, spec = await start(ts_env)
    bad: list[tuple[str, Any]] = []
    for i in range(100):
        kind = i % 5
        if kind == 0:
            bad.append(("progress", {"actor": "unit.member", "percent": "lots"}))
        elif kind == 1:
            bad.append(("progress", [1, 2, 3]))
        elif kind == 2:
            bad.append((f"bogus_{i}", {"actor": "x"}))
        elif kind == 3:
            bad.append(("claim", {"actor": "nobody", "node": "N1"}))
        else:
            bad.append(("accept", {"actor": "supervisor", "node": "N9", "extra": True}))
    for name, payload in bad:
        await handle.signal(name, payload)
    await update(handle, "progress", actor="unit.member", percent=10)  # still healthy
    evts = await events(handle)
    rejected = of_type(evts, "CommandRejected")
    assert len(rejected) == 100
    assert {r["code"] for r in rejected} == {"malformed", "unknown_command", "unauthorised"}
    state = await handle.query("state")
    assert state["progress"] == 10 and state["rejected_commands"] == 100
    assert all(n["status"] == "open" for n in state["nodes"])
    desc = await handle.describe()
    assert desc.status is not None and desc.status.name == "RUNNING"


async def test_continue_as_new_keeps_state(ts_env: WorkflowEnvironment, worker: None,
                                           wf_store: EventStore) -> None:
    handle, spec = await start(ts_env, continue_after_events=4)
    first_run = (await handle.describe()).run_id
    await update(handle, "acknowledge", actor="unit.member")
    for pct in (10, 20, 30, 40, 50):
        await update(handle, "progress", actor="unit.member", percent=pct)
    await update(handle, "claim", actor="unit.member", node="N1")
    latest = ts_env.client.get_workflow_handle(spec.task_id)
    # Updates answer before the loop records and continues: wait for the new run, bounded.
    deadline = asyncio.get_running_loop().time() + 20
    while (await latest.describe()).run_id == first_run:
        assert asyncio.get_running_loop().time() < deadline, "no continue-as-new happened"
        await asyncio.sleep(0.05)
    state = await latest.query("state")
    assert state["progress"] == 50 and state["acknowledged_at"] is not None
    assert state["nodes"][0]["status"] == "claimed"
    answer = await update(latest, "accept", actor="supervisor", node="N1")
    accepted_seq = answer["events"][0]["seq"]
    # The update answers before the loop records: wait (bounded) until the store has caught up
    # with everything the workflow decided, then compare the two records.
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        state = await latest.query("state")
        stored = [s.event for s in wf_store.load(spec.task_id)]
        if stored and stored[-1]["seq"] == state["last_seq"] and state["recorded_seq"] == state["last_seq"]:
            break
        assert asyncio.get_running_loop().time() < deadline, "the store never caught up"
        await asyncio.sleep(0.05)
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    by_seq = {e["seq"]: e for e in stored}
    assert by_seq[accepted_seq]["type"] == "NodeAccepted" and by_seq[accepted_seq]["node"] == "N1"
    assert [e["type"] for e in stored].count("TaskAssigned") == 1  # carried, not restarted
    live = {e["seq"]: e["type"] for e in await events(latest)}
    assert all(by_seq[q]["type"] == t for q, t in live.items())  # one record, two readers
    archived_runs = {a.run_id for a in wf_store.list_archives(spec.task_id)}
    assert first_run in archived_runs  # the finished run's history was archived before it went
