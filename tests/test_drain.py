"""A command that arrives while a run archives itself (before continue-as-new, or before it
returns) is recorded all the same: nothing answered is ever lost, and the chain has no gap."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.record import DubanActivities
from audit.chain_check import verify_task_chain
from infra.db.store import EventStore, open_store
from tests.scenario import make_spec
from worker import workflow_runner
from workflows.inputs import KeyTaskInput
from workflows.keytask import KeyTask
from workflows.search import initial_search_attributes

QUEUE = "drain-tests"


class Gate:
    """Holds every archive_history call until the test lets it through."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.reasons: list[str] = []
        self.handles: list[Any] = []

    @activity.defn(name="archive_history")
    async def archive_history(self, task_id: str, workflow_id: str, run_id: str, reason: str) -> bool:
        self.reasons.append(reason)
        self.entered.set()
        await self.release.wait()
        return True


@pytest.fixture
async def gated(ts_env: WorkflowEnvironment, tmp_path: Any) -> AsyncIterator[tuple[Gate, EventStore]]:
    url = f"sqlite:///{tmp_path / 'drain.db'}"
    store = open_store(url)
    gate = Gate()
    acts = DubanActivities(store, ts_env.client)
    with ThreadPoolExecutor(max_workers=4) as pool:
        async with Worker(ts_env.client, task_queue=QUEUE, workflows=[KeyTask],
                          activities=[acts.record_batch, gate.archive_history],
                          activity_executor=pool, workflow_runner=workflow_runner()):
            try:
                yield gate, store
            finally:
                gate.release.set()
                # This queue's worker goes away with the test: a workflow left running here
                # would hold the shared time-skipping server's clock back for every later test.
                for h in gate.handles:
                    with contextlib.suppress(Exception):
                        await h.terminate("test over")


async def _start(env: WorkflowEnvironment, gate: Gate, **kw: Any) -> tuple[Any, Any]:
    now = await env.get_current_time()
    spec = make_spec(now, plan_code=f"d{uuid.uuid4().hex[:8]}")
    handle = await env.client.start_workflow(
        "KeyTask", KeyTaskInput(spec=spec, **kw), id=spec.task_id, task_queue=QUEUE,
        search_attributes=initial_search_attributes(spec))
    gate.handles.append(env.client.get_workflow_handle(spec.task_id))
    return handle, spec


async def _idle(store: EventStore, task_id: str, seq: int) -> None:
    deadline = asyncio.get_running_loop().time() + 20
    while store.head(task_id).seq < seq:
        assert asyncio.get_running_loop().time() < deadline, f"seq {seq} never recorded"
        await asyncio.sleep(0.05)


async def test_command_during_archive_before_continue_as_new_is_recorded(
        ts_env: WorkflowEnvironment, gated: tuple[Gate, EventStore]) -> None:
    gate, store = gated
    handle, spec = await _start(ts_env, gate, continue_after_events=3)
    await handle.execute_update("acknowledge", {"actor": "unit.member"})
    await handle.execute_update("progress", {"actor": "unit.member", "percent": 10})
    await asyncio.wait_for(gate.entered.wait(), 20)  # the run is archiving itself
    assert gate.reasons == ["continued_as_new"]
    answer = await handle.execute_update("progress", {"actor": "unit.member", "percent": 20})
    late_seq = answer["events"][0]["seq"]
    gate.release.set()
    await _idle(store, spec.task_id, late_seq)
    latest = ts_env.client.get_workflow_handle(spec.task_id)
    after = await latest.execute_update("progress", {"actor": "unit.member", "percent": 30})
    await _idle(store, spec.task_id, after["events"][0]["seq"])
    stored = [s.event for s in store.load(spec.task_id)]
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert [e["percent"] for e in stored if e["type"] == "ProgressReported"] == [10, 20, 30]
    assert verify_task_chain(store, spec.task_id).ok


async def test_command_during_archive_at_close_is_recorded(
        ts_env: WorkflowEnvironment, gated: tuple[Gate, EventStore]) -> None:
    gate, store = gated
    handle, spec = await _start(ts_env, gate)
    for node in ("N1", "N2"):
        await handle.execute_update("claim", {"actor": "unit.member", "node": node})
        await handle.execute_update("accept", {"actor": "supervisor", "node": node})
    await asyncio.wait_for(gate.entered.wait(), 20)
    assert gate.reasons == ["closed"]
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("progress", {"actor": "unit.member", "percent": 100})
    assert "closed" in str(info.value.cause)
    gate.release.set()
    result = await asyncio.wait_for(handle.result(), 30)
    stored = [s.event for s in store.load(spec.task_id)]
    assert stored[-1]["type"] == "CommandRejected" and stored[-1]["code"] == "closed"
    assert result["last_seq"] == stored[-1]["seq"]
    assert verify_task_chain(store, spec.task_id).ok

