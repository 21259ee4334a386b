"""Floods and big payloads on the time-skipping server: a burst of commands is recorded in
bounded batches and carried across continue-as-new, a batch's input does not grow with the
task, and an oversized command is refused by size without failing any workflow task."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.record import DubanActivities
from audit.chain_check import verify_task_chain
from domain.commands import MAX_COMMAND_BYTES
from domain.events import parse_event
from domain.evolve import fold
from domain.projection import RecordBatch, project
from infra.db.store import EventStore, open_store
from tests.histories_util import failed_tasks, runs_of
from tests.scenario import make_spec
from worker import workflow_runner
from workflows.inputs import KeyTaskInput
from workflows.keytask import BATCH_MAX_BYTES, BATCH_MAX_EVENTS, CARRY_MAX_BYTES, KeyTask
from workflows.search import initial_search_attributes

QUEUE = "flood-tests"
SHA = "ab" * 32


@dataclass
class Recorder:
    """The real record_batch, keeping every input it was given."""

    acts: DubanActivities
    batches: list[RecordBatch] = field(default_factory=list)

    @activity.defn(name="record_batch")
    def record_batch(self, batch: RecordBatch) -> dict[str, Any]:
        self.batches.append(batch)
        return self.acts.record_batch(batch)

    def for_task(self, task_id: str) -> list[RecordBatch]:
        return [b for b in self.batches if b.task_id == task_id]


@dataclass
class Rig:
    env: WorkflowEnvironment
    store: EventStore
    recorder: Recorder
    handles: list[WorkflowHandle[Any, Any]] = field(default_factory=list)

    async def start(self, **kw: Any) -> tuple[WorkflowHandle[Any, Any], Any]:
        now = await self.env.get_current_time()
        spec = make_spec(now, plan_code=f"f{uuid.uuid4().hex[:8]}")
        handle = await self.env.client.start_workflow(
            "KeyTask", KeyTaskInput(spec=spec, **kw), id=spec.task_id, task_queue=QUEUE,
            search_attributes=initial_search_attributes(spec))
        self.handles.append(self.env.client.get_workflow_handle(spec.task_id))
        return handle, spec

    async def recorded(self, task_id: str, seq: int, seconds: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while self.store.head(task_id).seq < seq:
            assert asyncio.get_running_loop().time() < deadline, f"seq {seq} never recorded"
            await asyncio.sleep(0.05)


@pytest.fixture
async def rig(ts_env: WorkflowEnvironment, tmp_path: Any) -> AsyncIterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'flood.db'}")
    acts = DubanActivities(store, ts_env.client)
    recorder = Recorder(acts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        async with Worker(ts_env.client, task_queue=QUEUE, workflows=[KeyTask],
                          activities=[recorder.record_batch, acts.archive_history],
                          activity_executor=pool, workflow_runner=workflow_runner()):
            r = Rig(ts_env, store, recorder)
            try:
                yield r
            finally:
                # A workflow left running on this queue would hold the shared server's clock.
                for h in r.handles:
                    with contextlib.suppress(Exception):
                        await h.terminate("test over")


def started_input(events: list[Any]) -> Any:
    payload = events[0].workflow_execution_started_event_attributes.input.payloads[0]
    return json.loads(payload.data)


def stored(store: EventStore, task_id: str) -> list[dict[str, Any]]:
    return [s.event for s in store.load(task_id)]


async def test_an_oversized_update_is_refused_by_its_validator_unread(rig: Rig) -> None:
    """The validator's size check (the time-skipping server has no payload limit; what a real
    server does above its 2 MB limit is in test_flood_e2e.py)."""
    handle, spec = await rig.start()
    big = {"actor": "unit.member", "percent": 10, "note": "长" * 1_000_000}  # ≈ 3 MB of UTF-8
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await asyncio.wait_for(handle.execute_update("progress", big), 60)
    reason = str(info.value.cause)
    assert f"at most {MAX_COMMAND_BYTES} bytes" in reason and "progress" in reason
    assert "长长" not in reason  # the refusal does not repeat the payload
    # The task still answers, and nothing of the refused update was recorded.
    answer = await handle.execute_update("progress", {"actor": "unit.member", "percent": 20})
    await rig.recorded(spec.task_id, answer["events"][-1]["seq"])
    events = stored(rig.store, spec.task_id)
    assert [e["percent"] for e in events if e["type"] == "ProgressReported"] == [20]
    assert not [e for e in events if e["type"] == "CommandRejected"]
    assert failed_tasks(await runs_of(rig.env.client, spec.task_id)) == []


async def test_a_big_signal_is_recorded_as_rejected_with_a_short_excerpt(rig: Rig) -> None:
    handle, spec = await rig.start()
    await handle.signal("claim", {"actor": "unit.member", "node": "N1", "note": "x" * 300_000})
    await handle.signal("progress", {"actor": "unit.member", "percent": 5})
    answer = await handle.execute_update("acknowledge", {"actor": "unit.member"})
    await rig.recorded(spec.task_id, answer["events"][-1]["seq"])
    events = stored(rig.store, spec.task_id)
    refused = [e for e in events if e["type"] == "CommandRejected"]
    assert len(refused) == 1
    r = refused[0]
    assert (r["command"], r["code"], r["actor"]) == ("claim", "too_large", "unknown")
    assert f"at most {MAX_COMMAND_BYTES} bytes" in r["reason"]
    assert len(r["payload_excerpt"]) <= 210 and r["payload_excerpt"].startswith("{")
    # The signals after it were handled as usual; the node was not claimed.
    assert [e["percent"] for e in events if e["type"] == "ProgressReported"] == [5]
    assert not [e for e in events if e["type"] == "NodeClaimed"]
    assert verify_task_chain(rig.store, spec.task_id).ok
    assert failed_tasks(await runs_of(rig.env.client, spec.task_id)) == []


async def test_a_burst_is_recorded_in_bounded_batches_across_continue_as_new(rig: Rig) -> None:
    handle, spec = await rig.start(continue_after_events=150)
    n = 1_200
    await asyncio.gather(*(handle.signal("progress", {"actor": "unit.member", "percent": i % 101})
                           for i in range(n)))
    answer = await handle.execute_update("acknowledge", {"actor": "unit.member"})
    await rig.recorded(spec.task_id, answer["events"][-1]["seq"], seconds=120)
    events = stored(rig.store, spec.task_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # each signal decided once: accepted, or refused (e.g. progress going backwards)
    handled = [e for e in events if e["type"] == "ProgressReported"
               or e["type"] == "CommandRejected" and e["command"] == "progress"]
    assert len(handled) == n
    assert verify_task_chain(rig.store, spec.task_id).ok
    batches = rig.recorder.for_task(spec.task_id)
    # every input bounded; together they hold each event exactly once
    assert max(len(b.events) for b in batches) <= BATCH_MAX_EVENTS
    assert max(len(json.dumps(b.events, ensure_ascii=False).encode()) for b in batches) \
        <= BATCH_MAX_BYTES + 4096
    assert sorted(e["seq"] for b in batches for e in b.events) == [e["seq"] for e in events]
    runs = await runs_of(rig.env.client, spec.task_id)
    assert len(runs) >= 2
    # what the first run had not recorded went on to the next run in its input, not drained
    carried = [started_input(r)["carried"] for r in runs[:-1]]
    assert any(c["pending"] for c in carried)
    for c in carried:
        assert c["pending"][0]["seq"] == c["recorded_seq"] + 1 if c["pending"] else True
        assert len(json.dumps(c["pending"], ensure_ascii=False).encode()) <= CARRY_MAX_BYTES
    assert failed_tasks(runs) == []
    # the read model describes the head
    row = rig.store.read_model_rows(spec.task_id)["task"]
    assert (row["last_seq"], row["status"]) == (events[-1]["seq"], "in_progress")


async def test_a_batch_input_stays_small_for_a_task_with_300_findings(rig: Rig) -> None:
    handle, spec = await rig.start()
    now = await rig.env.get_current_time()
    findings = [{"finding_id": f"F{i:03d}", "severity": "一般",
                 "description": f"第{i}项: 台账资料不全，需补充会议记录和公示照片" * 3,
                 "evidence": [{"sha256": SHA, "name": f"photo-{i}.jpg"}]} for i in range(300)]
    inspected = await handle.execute_update("inspect", {
        "actor": "supervisor", "inspection_id": "I1", "visited_at": now.isoformat(),
        "place": "东城镇一村", "outcome": "不达标", "findings": findings})
    last = inspected["events"][-1]["seq"]
    await rig.recorded(spec.task_id, last)
    assert len(rig.store.read_model_rows(spec.task_id)["findings"]) == 300
    state = fold(parse_event(e) for e in stored(rig.store, spec.task_id))
    whole = len(project(state).model_dump_json().encode())
    assert whole > 100_000  # what a batch carried before: the whole read model

    before = len(rig.recorder.for_task(spec.task_id))
    reported = await handle.execute_update("report_rectification", {
        "actor": "unit.member", "finding_id": "F123", "note": "已补充"})
    await rig.recorded(spec.task_id, reported["events"][-1]["seq"])
    progress = await handle.execute_update("progress", {"actor": "unit.member", "percent": 30})
    await rig.recorded(spec.task_id, progress["events"][-1]["seq"])
    new = rig.recorder.for_task(spec.task_id)[before:]
    sizes = [len(b.model_dump_json().encode()) for b in new]
    assert new and max(sizes) < 8_000, sizes
    assert [f.finding_id for b in new for f in b.read_model.findings] == ["F123"]
    assert all(b.read_model.partial for b in new)
    rows = rig.store.read_model_rows(spec.task_id)
    assert len(rows["findings"]) == 300  # the other rows stay
    assert {f["finding_id"]: f["status"] for f in rows["findings"]}["F123"] == "reported"
    assert rows["task"]["progress"] == 30 and rows["task"]["last_seq"] == progress["events"][-1]["seq"]
