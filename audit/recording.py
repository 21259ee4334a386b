"""Tasks whose workflow decided events the store never recorded.

The workflow records every event through `record_batch`. A batch the store refuses for good
(`StoreConflict`, `StoreGap`, `StoreInvalidBatch`: see activities/record.py) leaves the
workflow's decided sequence (`last_seq` of its `state` query) ahead of what it recorded
(`recorded_seq`) and of the store's head. A batch merely in flight does that for a moment too,
so a task is reported only when its workflow is no longer running (it failed or ended with
events unrecorded) or its `record_batch` activity is failing (a pending attempt with a failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from activities.record import STORE_REFUSAL_TYPES

RECORD_ACTIVITY = "record_batch"


@dataclass(frozen=True)
class RecordingGap:
    """A task whose workflow decided up to `decided_seq` while the store holds `stored_seq`."""

    task_id: str
    decided_seq: int | None
    recorded_seq: int | None
    stored_seq: int
    status: str
    cause: str

    @property
    def line(self) -> str:
        decided = "?" if self.decided_seq is None else str(self.decided_seq)
        return (f"{self.task_id}: the workflow decided up to seq {decided} but the store holds "
                f"{self.stored_seq} ({self.status}): {self.cause}")

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "decided_seq": self.decided_seq,
                "recorded_seq": self.recorded_seq, "stored_seq": self.stored_seq,
                "status": self.status, "cause": self.cause}


def _failing_record(description: Any) -> str | None:
    """Why the run's `record_batch` activity is failing, if it is."""
    for pending in description.pending_activities:
        if pending.activity_type.name != RECORD_ACTIVITY:
            continue
        if pending.HasField("last_failure") and pending.attempt > 1:
            failure = pending.last_failure
            kind = failure.application_failure_info.type or "error"
            return f"record_batch failing (attempt {pending.attempt}): {kind}: {failure.message}"
    return None


async def _closing_failure(handle: Any) -> str:
    """The failure a closed run ended with, from its history's last event."""
    async for event in handle.fetch_history_events():
        last = event
    attrs = last.workflow_execution_failed_event_attributes
    if attrs.HasField("failure"):
        # The chain runs workflow failure -> activity failure -> the activity's error -> its
        # cause: name the store's refusal if there is one, else the innermost error.
        failure = attrs.failure
        while (failure.application_failure_info.type not in STORE_REFUSAL_TYPES
               and failure.HasField("cause")):
            failure = failure.cause
        kind = failure.application_failure_info.type or "error"
        return f"the run failed: {kind}: {failure.message}"
    return "the run ended with events it never recorded"


async def recording_gap(client: Client, store: Any, task_id: str) -> RecordingGap | None:
    """The finding for one task, or None (no workflow, or nothing decided left unrecorded)."""
    handle = client.get_workflow_handle(task_id)
    try:
        # The raw description: it needs no decoding of search attributes.
        description = await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(namespace=client.namespace,
                                             execution=WorkflowExecution(workflow_id=task_id)))
    except RPCError:
        return None  # no workflow (e.g. the engine's retention passed): nothing to compare
    stored = int(store.head(task_id).seq)
    status = WorkflowExecutionStatus(description.workflow_execution_info.status)
    status_name = status.name.lower()
    decided: int | None = None
    recorded: int | None = None
    try:
        state = await handle.query("state")
        decided, recorded = int(state["last_seq"]), int(state["recorded_seq"])
    except Exception:  # noqa: BLE001 - e.g. no worker to answer: judge by the run's status
        pass
    if status == WorkflowExecutionStatus.RUNNING:
        cause = _failing_record(description)
        if cause is None or (decided is not None and decided <= stored):
            return None
        return RecordingGap(task_id, decided, recorded, stored, status_name, cause)
    if status == WorkflowExecutionStatus.FAILED:
        cause = await _closing_failure(handle)
        unrecorded = decided is not None and (decided > stored or recorded != decided)
        refused = any(f": {kind}: " in cause for kind in STORE_REFUSAL_TYPES)
        if unrecorded or (decided is None and refused):
            return RecordingGap(task_id, decided, recorded, stored, status_name, cause)
        return None
    if decided is not None and (decided > stored or (recorded is not None and recorded < decided)):
        return RecordingGap(task_id, decided, recorded, stored, status_name,
                            "the run ended with events it never recorded")
    return None


async def recording_gaps(client: Client, store: Any, task_ids: Sequence[str],
                         concurrency: int = 16) -> list[RecordingGap]:
    """`recording_gap` of every task (a few at a time), in task order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(task_id: str) -> RecordingGap | None:
        async with sem:
            return await recording_gap(client, store, task_id)

    found = await asyncio.gather(*(one(t) for t in task_ids))
    return [g for g in found if g is not None]
