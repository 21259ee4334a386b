"""A flood on a real dev server: 12,000 signals to one task, in bursts, with the server's
continue-as-new suggestion lowered. Nothing is refused by the server, the task continues as new,
the stored chain is contiguous, a ladder rung due during the flood fires on time, and no
workflow task fails in any run. A 3 MB update is refused with its reason, failing no task.

Run with `-s` to see the figures (signals sent/refused, runs, seconds, rung lag)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from audit.chain_check import verify_task_chain
from domain.commands import MAX_COMMAND_BYTES
from infra.db.store import EventStore, open_store
from infra.temporal.devserver import start_dev_server
from tests.scenario import make_spec
from workflows.inputs import KeyTaskInput
from workflows.search import DEFINITIONS, initial_search_attributes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUEUE = "flood-e2e"
SIGNALS = 12_000
BURSTS = 6
IN_FLIGHT = 200  # concurrent signal calls
SUGGEST_AFTER = 2_000  # the server suggests continue-as-new at this many history events
RUNG_DUE_AFTER = dt.timedelta(seconds=10)  # node N1 falls due this long into the flood
RUNG_LAG = dt.timedelta(seconds=5)  # how late its first rung may fire, flood or not


class Flood:
    def __init__(self, client: Client, store: EventStore) -> None:
        self.client = client
        self.store = store


@pytest.fixture(scope="module")
async def flood(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Flood]:
    """Its own dev server (not the session one): continue-as-new is suggested early."""
    from worker import running_worker

    tmp: Path = tmp_path_factory.mktemp("flood")
    server = await start_dev_server(
        tmp / "temporal.db", log_file=tmp / "devserver.log", headless=True,
        search_attributes=DEFINITIONS,
        dynamic_config={"limit.historyCount.suggestContinueAsNew": SUGGEST_AFTER},
    )
    try:
        client = await Client.connect(server.address, namespace="default",
                                      data_converter=pydantic_data_converter)
        store = open_store(f"sqlite:///{tmp / 'duban.db'}")
        async with running_worker(client, store, QUEUE):
            yield Flood(client, store)
    finally:
        server.stop()


async def runs_of(client: Client, workflow_id: str) -> list[list[Any]]:
    out = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        out.append(list(history.events))
        first = history.events[0].workflow_execution_started_event_attributes
        if not first.continued_execution_run_id:
            return out
        run_id = first.continued_execution_run_id


def failed_tasks(runs: list[list[Any]]) -> list[str]:
    return [f"{e.workflow_task_failed_event_attributes.cause}: "
            f"{e.workflow_task_failed_event_attributes.failure.message[:160]}"
            for events in runs for e in events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]


async def start(flood: Flood, **kw: Any) -> tuple[Any, Any]:
    now = dt.datetime.now(dt.UTC)
    spec = make_spec(now, plan_code=f"e{uuid.uuid4().hex[:8]}", **kw)
    handle = await flood.client.start_workflow(
        "KeyTask", KeyTaskInput(spec=spec), id=spec.task_id, task_queue=QUEUE,
        search_attributes=initial_search_attributes(spec))
    return handle, spec


async def test_12000_signals_in_bursts(flood: Flood) -> None:
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    # N1 falls due RUNG_DUE_AFTER into the flood; make_spec counts in days.
    days = RUNG_DUE_AFTER / dt.timedelta(days=1)
    handle, spec = await start(flood, due_days=(days, 30))  # type: ignore[arg-type]
    due = spec.nodes[0].due
    assert due - now <= RUNG_DUE_AFTER + dt.timedelta(seconds=1)

    gate = asyncio.Semaphore(IN_FLIGHT)
    refused: list[str] = []

    async def send(i: int) -> None:
        async with gate:
            try:
                await handle.signal("progress", {"actor": "unit.member",
                                                 "percent": min(99, i * 100 // SIGNALS)})
            except RPCError as exc:
                refused.append(str(exc)[:200])

    per_burst = SIGNALS // BURSTS
    for b in range(BURSTS):
        await asyncio.gather(*(send(b * per_burst + i) for i in range(per_burst)))
    sent_in = time.monotonic() - started

    def handled() -> int:
        return sum(1 for s in flood.store.load(spec.task_id)
                   if s.event["type"] == "ProgressReported"
                   or s.event["type"] == "CommandRejected" and s.event["command"] == "progress")

    deadline = time.monotonic() + 180
    while (count := handled()) < SIGNALS - len(refused):
        assert time.monotonic() < deadline, f"only {count} of {SIGNALS} signals recorded"
        await asyncio.sleep(0.5)
    recorded_in = time.monotonic() - started

    events = [s.event for s in flood.store.load(spec.task_id)]
    runs = await runs_of(flood.client, spec.task_id)
    rung = next(e for e in events if e["type"] == "EscalationFired" and e["target"] == "N1")
    lag = dt.datetime.fromisoformat(rung["at"]) - dt.datetime.fromisoformat(rung["required_at"])
    figures = {
        "signals_sent": SIGNALS, "refused_by_server": len(refused), "runs": len(runs),
        "history_events_per_run": [len(r) for r in reversed(runs)],
        "domain_events": len(events), "seconds_to_send": round(sent_in, 1),
        "seconds_to_record": round(recorded_in, 1), "rung_lag_seconds": lag.total_seconds(),
        "workflow_tasks_failed": failed_tasks(runs),
    }
    print("\nFLOOD FIGURES " + json.dumps(figures))

    assert refused == []
    assert len(runs) >= 2, "never continued as new"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert verify_task_chain(flood.store, spec.task_id).ok
    assert dt.datetime.fromisoformat(rung["required_at"]) == due
    assert dt.timedelta(0) <= lag <= RUNG_LAG, f"rung {rung['step_key']} fired {lag} late"
    assert failed_tasks(runs) == []
    await handle.terminate("test over")


async def test_a_3_mb_update_is_refused_and_fails_no_workflow_task(flood: Flood) -> None:
    handle, spec = await start(flood)
    big = {"actor": "unit.member", "percent": 10, "note": "长" * 1_000_000}
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await asyncio.wait_for(handle.execute_update("progress", big), 60)
    reason = str(info.value.cause)
    assert f"at most {MAX_COMMAND_BYTES} bytes" in reason and "长长" not in reason
    answer = await handle.execute_update("progress", {"actor": "unit.member", "percent": 20})
    assert answer["accepted"]
    assert failed_tasks(await runs_of(flood.client, spec.task_id)) == []
    await handle.terminate("test over")
