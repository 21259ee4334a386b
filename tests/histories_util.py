"""Reading a task's engine histories in tests: every run of it, and its failed workflow tasks."""

from __future__ import annotations

from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client


async def runs_of(client: Client, workflow_id: str) -> list[list[Any]]:
    """Every run's history, newest first (following continued_execution_run_id back)."""
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
    """Every WorkflowTaskFailed of the runs: its cause and the start of its message."""
    return [f"{e.workflow_task_failed_event_attributes.cause}: "
            f"{e.workflow_task_failed_event_attributes.failure.message[:160]}"
            for events in runs for e in events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
