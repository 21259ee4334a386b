"""The recording activity: a retry, or a crash between appending and notifying, never sends a
督办单 twice and never writes an event twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.notices import Notice, OutboxChannel
from activities.record import DubanActivities
from audit.chain_check import verify_task_chain
from domain import events as ev
from domain.decide import assign, tick
from domain.evolve import evolve
from domain.projection import RecordBatch, notice_context, project
from domain.state import TaskState
from tests.scenario import make_spec

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)


def late_batches() -> list[RecordBatch]:
    """A task left alone: its first batch, then one batch per wake-up with its rungs."""
    spec = make_spec(T0, due_days=(3,), progress=(100,))
    first = assign(spec, T0)
    state: TaskState = evolve(None, first)
    batches = [RecordBatch(task_id=spec.task_id, events=[ev.event_json(first)],
                           read_model=project(state))]
    for days in (3, 9, 16):
        evts = tick(state, T0 + dt.timedelta(days=days, hours=1), draw=99)
        for e in evts:
            state = evolve(state, e)
        batches.append(RecordBatch(
            task_id=spec.task_id, events=[ev.event_json(e) for e in evts],
            read_model=project(state),
            notices=[notice_context(state, e) for e in evts if isinstance(e, ev.EscalationFired)]))
    return batches


class FlakyChannel(OutboxChannel):
    """Dies after handing over its first copy: the activity crashed mid-way."""

    def __init__(self, store: Any):
        super().__init__(store)
        self.crash_after = 1

    def deliver(self, notice: Notice, recipient: str) -> bool:
        if self.crash_after == 0:
            raise ConnectionError("worker lost mid-send")
        self.crash_after -= 1
        return super().deliver(notice, recipient)


def counts(store: Any, task_id: str) -> tuple[int, int, int]:
    return (len(store.load(task_id)), len(store.list_notices(task_id)),
            len([o for o in store.list_outbox(undelivered_only=False) if o["task_id"] == task_id]))


def test_retried_batches_record_and_notify_once(store: Any) -> None:
    acts = DubanActivities(store)
    env = ActivityEnvironment()
    batches = late_batches()
    results = [env.run(acts.record_batch, b) for b in batches]
    once = counts(store, batches[0].task_id)
    fired = sum(1 for b in batches for e in b.events if e["type"] == "EscalationFired")
    assert fired >= 3 and once[1] == fired
    assert sum(r["notices_sent"] for r in results) == once[2] > fired  # several recipients each
    again = [env.run(acts.record_batch, b) for b in batches]  # every retry, in order
    assert counts(store, batches[0].task_id) == once
    assert all(r["appended"] == 0 and r["notices_sent"] == 0 for r in again)
    assert verify_task_chain(store, batches[0].task_id).ok


def test_crash_between_append_and_notice_sends_each_copy_once(store: Any) -> None:
    batches = late_batches()
    acts = DubanActivities(store)
    env = ActivityEnvironment()
    env.run(acts.record_batch, batches[0])
    env.run(acts.record_batch, batches[1])
    crashing = batches[2]  # 督办单 to the unit and its head: two copies
    flaky = DubanActivities(store, channels=[FlakyChannel(store)])
    with pytest.raises(ConnectionError):
        env.run(flaky.record_batch, crashing)  # events appended, one copy handed over
    head_after_crash = store.head(crashing.task_id)
    retried = env.run(acts.record_batch, crashing)  # Temporal's retry
    assert retried["appended"] == 0 and store.head(batches[0].task_id) == head_after_crash
    fired = [e for e in crashing.events if e["type"] == "EscalationFired"]
    keys_fired = {e["step_key"] for e in fired}
    rows = [o for o in store.list_outbox(undelivered_only=False)
            if o["task_id"] == crashing.task_id and o["step_key"] in keys_fired]
    keys = [(o["step_key"], o["channel"], o["recipient"]) for o in rows]
    assert len(keys) == len(set(keys))
    expected_copies = sum(len(e["recipients"]) for e in fired)
    assert len(rows) == expected_copies and retried["notices_sent"] == expected_copies - 1
