"""The worker's interceptor: log context for every activity and workflow, replay-safe
workflow log lines, and the `record_batch` bookkeeping behind `duban_tasks_unrecorded`.

Activities: workflow id, run id, task, plan, unit, activity and attempt are bound with
`structlog.contextvars` around the call, so every line the activity logs carries them (a sync
activity runs in the worker's thread pool in a copy of this context).

Workflows: the inbound interceptor logs what happened to a run — started, an update
received, completed / continued as new / failed — to the logger `duban.workflow`, with the same
fields, and only when the workflow is *not replaying history*: a worker that lost its cache (or
`audit verify`'s replayer) re-runs the history, and would otherwise log it all again. The
workflow code itself logs nothing and stays as it is. Signals are not logged one by one: a
continued run's first workflow task may deliver thousands of them, and a log line each made
that task outlast the SDK's deadlock detector (2 s) in the 12,000-signal flood; each signal is
on the record as the event it caused (or its `CommandRejected`).
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import structlog
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    HandleUpdateInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from infra import metrics

RECORD_ACTIVITY = "record_batch"  # = workflows.keytask.RECORD_ACTIVITY (infra imports no workflow)
WORKFLOW_LOGGER = "duban.workflow"
ACTIVITY_LOGGER = "duban.activity"

_alog = structlog.get_logger(ACTIVITY_LOGGER)


def task_fields(task_id: str) -> dict[str, str]:
    """task_id, plan, unit of a KeyTask's id (`PLAN/TASK/UNIT`, domain.plan.task_id_for)."""
    parts = task_id.split("/")
    out = {"task_id": task_id}
    if len(parts) == 3:
        out["plan"], out["unit"] = parts[0], parts[2]
    return out


# --------------------------------------------------------------------------- activities


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        task_id = info.workflow_id or ""
        fields = {"workflow_id": info.workflow_id, "run_id": info.workflow_run_id,
                  **task_fields(task_id), "activity": info.activity_type,
                  "attempt": info.attempt}
        recording = info.activity_type == RECORD_ACTIVITY
        with structlog.contextvars.bound_contextvars(**fields):
            if info.attempt > 1:
                _alog.info("activity.retry")
                if recording:  # an earlier attempt failed or timed out, here or elsewhere
                    metrics.UNRECORDED.waiting(task_id)
            started = time.perf_counter()
            try:
                result = await super().execute_activity(input)
            except BaseException as exc:
                final = isinstance(exc, ApplicationError) and exc.non_retryable
                if recording and not final and isinstance(exc, Exception):
                    metrics.RECORD_FAILURES.labels(error=type(exc).__name__).inc()
                    metrics.UNRECORDED.waiting(task_id)
                _alog.warning("activity.failed", error=f"{type(exc).__name__}: {exc}",
                              retried=not final,
                              seconds=round(time.perf_counter() - started, 6))
                raise
            if recording:
                metrics.UNRECORDED.recorded(task_id)
            _alog.debug("activity.completed", seconds=round(time.perf_counter() - started, 6))
            return result


# --------------------------------------------------------------------------- workflows


def _wlog(level: str, event: str, **kw: Any) -> None:
    """Log a workflow fact once: never while replaying history (the SDK's own rule for
    `workflow.logger`). Outside the sandbox's restrictions: logging reads the clock and writes
    a stream, which is harmless here and nothing the workflow decides from."""
    if workflow.unsafe.is_replaying_history_events():
        return
    info = workflow.info()
    with workflow.unsafe.sandbox_unrestricted(), workflow.unsafe.imports_passed_through():
        log = structlog.get_logger(WORKFLOW_LOGGER)
        getattr(log, level)(event, workflow_id=info.workflow_id, run_id=info.run_id,
                            **task_fields(info.workflow_id), workflow_type=info.workflow_type,
                            **kw)


def _failed(event: str, exc: BaseException, **kw: Any) -> NoReturn:
    # A FailureError fails the run or the update; anything else fails only this workflow task,
    # which the worker retries (after a replay: the retry logs its own failure, not this one).
    what = "failed" if isinstance(exc, FailureError) else "task_failed"
    _wlog("error" if what == "task_failed" else "warning", f"{event}.{what}",
          error=f"{type(exc).__name__}: {exc}", **kw)
    raise exc


class _WorkflowInbound(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        info = workflow.info()
        _wlog("info", "workflow.started", continued_from=info.continued_run_id,
              attempt=info.attempt)
        try:
            result = await super().execute_workflow(input)
        except workflow.ContinueAsNewError:
            _wlog("info", "workflow.continued_as_new",
                  history_length=workflow.info().get_current_history_length())
            raise
        except Exception as exc:
            _failed("workflow", exc)
        status = result.get("status") if isinstance(result, dict) else None
        _wlog("info", "workflow.completed", status=status)
        return result

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        try:
            result = await super().handle_update_handler(input)
        except ApplicationError as exc:
            # A refused command (Rejected.<code>): recorded by the workflow, answered as failed.
            _wlog("info", "workflow.update", update=input.update, id=input.id,
                  outcome="rejected", code=exc.type)
            raise
        except Exception as exc:
            _failed("workflow.update", exc, update=input.update, id=input.id)
        _wlog("info", "workflow.update", update=input.update, id=input.id, outcome="accepted")
        return result


class DubanInterceptor(Interceptor):
    """Pass one to `Worker(interceptors=[...])` and to a `Replayer` alike."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(
            self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowInbound
