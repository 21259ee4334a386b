"""The activities: every side effect of a KeyTask, each safe to retry.

`record_batch` appends a batch of events (hash-chained, idempotent by (task, seq)), updates the
read model in the same transaction, then issues the batch's 督办单 notices — each at most once
per (task, step), because the notice and outbox rows are keyed by it. A retry after a crash at
any point re-does only what is missing.

A batch the store refuses for good — a different event already stored at one of its seqs
(`ConflictError`), a seq gap (`GapError`), a malformed batch (`ValueError`) — fails the
activity as a non-retryable `ApplicationError` of type `StoreConflict`, `StoreGap` or
`StoreInvalidBatch`: retrying the same input cannot succeed. Each is counted in
`duban_store_refusals_total{kind}`, and `audit verify` names the task (its workflow decided
events the store never recorded).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.notices import Channel, OutboxChannel, issued, render_notice
from domain.projection import RecordBatch
from infra import metrics
from infra.db.store import ArchiveConflictError, ConflictError, GapError
from infra.db.store import ReadModel as StoreReadModel

log = structlog.get_logger("duban.activities")

# ApplicationError types of batches the store refuses for good (see the module docstring).
STORE_CONFLICT, STORE_GAP, STORE_INVALID = "StoreConflict", "StoreGap", "StoreInvalidBatch"
STORE_REFUSAL_TYPES = (STORE_CONFLICT, STORE_GAP, STORE_INVALID)


def _refused(task_id: str, events: list[dict[str, Any]], exc: Exception) -> ApplicationError:
    kind = (STORE_CONFLICT if isinstance(exc, ConflictError)
            else STORE_GAP if isinstance(exc, GapError) else STORE_INVALID)
    metrics.STORE_REFUSALS.labels(kind=kind).inc()
    seqs = [e.get("seq") for e in events if isinstance(e, dict)]
    span = f"seq {seqs[0]}..{seqs[-1]}" if seqs else "an empty batch"
    log.error("store.refused", task_id=task_id, kind=kind, events=span, error=str(exc))
    return ApplicationError(f"the store refuses task {task_id}'s {span} for good: {exc}",
                            type=kind, non_retryable=True)


class DubanActivities:
    def __init__(self, store: Any, client: Client | None = None,
                 channels: list[Channel] | None = None):
        self.store = store
        self.client = client
        self.channels: list[Channel] = channels if channels is not None else [OutboxChannel(store)]

    @activity.defn(name="record_batch")
    def record_batch(self, batch: RecordBatch) -> dict[str, Any]:
        started = time.perf_counter()
        rm = batch.read_model
        try:
            with metrics.STORE_APPEND_LATENCY.time():
                result = self.store.append(batch.task_id, batch.events, read_model=StoreReadModel(
                    task=rm.task.model_dump(),
                    inspections=[i.model_dump() for i in rm.inspections],
                    findings=[f.model_dump() for f in rm.findings],
                    partial=rm.partial,
                ))
        except (ConflictError, GapError, ValueError) as exc:
            raise _refused(batch.task_id, batch.events, exc) from exc
        metrics.EVENTS_RECORDED.inc(result.appended)
        # Only the events this call appended (the batch's tail): a retry re-sends the rest.
        for e in batch.events[len(batch.events) - result.appended:]:
            if e["type"] == "CommandRejected":
                metrics.COMMANDS_REJECTED.labels(reason=e["code"]).inc()
        contexts = {c.step_key: c for c in batch.notices}
        sent = 0
        for e in batch.events:
            if e["type"] != "EscalationFired":
                continue
            ctx = contexts.get(e["step_key"])
            if ctx is None:
                raise ValueError(f"no notice context for {e['step_key']}")
            notice = render_notice(ctx, e)
            new = self.store.record_notice(
                task_id=notice.task_id, step_key=notice.step_key, node=notice.node,
                ladder=notice.ladder, step=notice.step, level=notice.level, title=notice.title,
                document=notice.document, reply_by=notice.reply_by,
                plan_code=rm.task.plan_code, year=notice.year, numbered=notice.numbered,
            )
            if notice.numbered:
                # What was filed, number and all (on a retry: the number given the first time).
                notice = issued(notice, self.store.notice(notice.task_id, notice.step_key))
            if new:
                metrics.ESCALATIONS.labels(ladder=notice.ladder, step=notice.step).inc()
                metrics.ESCALATION_LATENESS.labels(ladder=notice.ladder).observe(
                    metrics.lateness_seconds(e))
            for channel in self.channels:
                for recipient in notice.recipients:
                    if channel.deliver(notice, recipient):
                        sent += 1
                        metrics.NOTICES_SENT.labels(channel=channel.name).inc()
        for e in batch.events:  # 签收 and missed 反馈时限 shown on the notice they concern
            if e["type"] == "NoticeSignedFor":
                self.store.note_notice_reply(batch.task_id, e["step_key"],
                                             signed_at=dt.datetime.fromisoformat(e["at"]),
                                             signed_by=e["actor"])
            elif e["type"] == "NoticeReplyMissed":
                self.store.note_notice_reply(batch.task_id, e["step_key"],
                                             reply_missed_at=dt.datetime.fromisoformat(e["at"]))
        metrics.RECORD_LATENCY.observe(time.perf_counter() - started)
        return {"appended": result.appended, "skipped": result.skipped,
                "head_seq": result.head_seq, "notices_sent": sent}

    @activity.defn(name="archive_history")
    async def archive_history(self, task_id: str, workflow_id: str, run_id: str,
                              reason: str) -> bool:
        """Keep the engine's history in the store: Temporal deletes closed ones after retention."""
        if self.client is None:
            raise RuntimeError("archive_history needs a Temporal client")
        history = await self.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        text = history.to_json()
        # The store is blocking (SQLAlchemy): in a thread, so the worker's event loop keeps
        # serving workflow tasks and other activities meanwhile.
        try:
            return bool(await asyncio.to_thread(self.store.archive_history, task_id, workflow_id,
                                                run_id, reason, text))
        except ArchiveConflictError:
            # Archived before by this run (its history has grown since): keep the longer one;
            # the store checks the old one is its exact prefix, else this raises again.
            return bool(await asyncio.to_thread(self.store.supersede_archive, run_id, text))
