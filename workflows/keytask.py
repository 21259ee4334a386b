"""KeyTask: one durable workflow per (plan, key task, responsible unit).

A thin shell around the domain decider: commands arrive as signals or updates, the clock as a
durable timer set to the domain's next wake-up; `decide`/`tick` give events, `evolve` folds
them, and one activity records each batch (events, read model, 督办单 notices) idempotently.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain import events as ev
    from domain.commands import Command, Rejection, actor_of, parse_command
    from domain.decide import assign, decide, reject, tick
    from domain.evolve import evolve
    from domain.projection import RecordBatch, notice_context, project
    from domain.rules import next_wakeup
    from domain.state import TaskState
    from infra import search_attributes as sa
    from workflows.inputs import Carried, KeyTaskInput

WORKFLOW_NAME = "KeyTask"
RECORD_ACTIVITY = "record_batch"
ARCHIVE_ACTIVITY = "archive_history"
RECENT_EVENTS_KEPT = 500
# Patches (workflow.patched): each guards a change in the commands the workflow emits, so the
# histories of earlier versions (tests/histories/) still replay.
DRAIN_PATCH = "drain-after-archive"
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(minutes=5))


def workflow_id(task_id: str) -> str:
    return task_id


def _excerpt(payload: object) -> str:
    try:
        return json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str)[:500]
    except (TypeError, ValueError):
        return repr(payload)[:500]


@workflow.defn(name=WORKFLOW_NAME)
class KeyTask:
    @workflow.init
    def __init__(self, inp: KeyTaskInput) -> None:
        self._inp = inp
        self._events_this_run = 0
        self._needs_tick = True  # a command arrived since the clock last looked at the state
        self._sa_last: dict[str, Any] | None = None
        if inp.carried is not None:
            self._state: TaskState = inp.carried.state
            self._recent: list[dict[str, Any]] = list(inp.carried.recent)
            self._recorded_seq = inp.carried.recorded_seq
            self._unrecorded: list[ev.Event] = []
        else:
            first = assign(inp.spec, workflow.now())
            self._state = evolve(None, first)
            self._recent = []
            self._recorded_seq = 0
            self._unrecorded = []
            self._push(first)

    # --- the loop ------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: KeyTaskInput) -> dict[str, Any]:
        while True:
            self._tick()
            await self._flush()
            if self._state.status == "closed":
                break
            if self._should_continue():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._tick()
                await self._flush()
                await self._archive("continued_as_new")
                if workflow.patched(DRAIN_PATCH):
                    await self._drain()
                workflow.continue_as_new(KeyTaskInput(
                    spec=self._state.spec,
                    carried=Carried(state=self._state, recent=self._recent[-RECENT_EVENTS_KEPT:],
                                    recorded_seq=self._recorded_seq),
                    continue_after_events=inp.continue_after_events,
                ))
            if self._needs_tick:
                continue  # commands came in while recording: let the clock see them first
            now = workflow.now()
            wake = next_wakeup(self._state, now)
            timeout = None if wake is None else max(wake - now, timedelta(milliseconds=1))
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._needs_tick, timeout=timeout,
                                              timeout_summary="next deadline or ladder rung")
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._flush()
        await self._archive("closed")
        if workflow.patched(DRAIN_PATCH):
            await self._drain()
        return {"task_id": self._state.task_id, "status": self._state.status,
                "last_seq": self._state.last_seq}

    async def _drain(self) -> None:
        """Record what commands decided while the run archived itself: without this, a command
        arriving during the last activity was answered but never stored (seq lost at
        continue-as-new, a refusal lost at close)."""
        while self._unrecorded or not workflow.all_handlers_finished():
            await workflow.wait_condition(workflow.all_handlers_finished)
            self._tick()
            await self._flush()

    def _should_continue(self) -> bool:
        limit = self._inp.continue_after_events
        if limit is not None and self._events_this_run >= limit:
            return True
        return workflow.info().is_continue_as_new_suggested()

    def _push(self, e: ev.Event) -> None:
        self._unrecorded.append(e)
        self._recent.append(ev.event_json(e))
        if len(self._recent) > 2 * RECENT_EVENTS_KEPT:
            self._recent = self._recent[-RECENT_EVENTS_KEPT:]
        self._events_this_run += 1

    def _emit(self, events: Sequence[ev.Event]) -> None:
        for e in events:
            self._state = evolve(self._state, e)
            self._push(e)

    def _tick(self) -> None:
        self._needs_tick = False
        draw = workflow.random().randint(0, 99)
        self._emit(tick(self._state, workflow.now(), draw))

    async def _flush(self) -> None:
        while self._unrecorded:
            batch, self._unrecorded = self._unrecorded, []
            notices = [notice_context(self._state, e) for e in batch
                       if isinstance(e, ev.EscalationFired)]
            await workflow.execute_activity(
                RECORD_ACTIVITY,
                RecordBatch(task_id=self._state.task_id, events=[ev.event_json(e) for e in batch],
                            read_model=project(self._state), notices=notices),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RECORD_RETRY,
                summary=f"record {len(batch)} event(s)",
            )
            self._recorded_seq = batch[-1].seq
        self._upsert_search_attributes()

    async def _archive(self, reason: str) -> None:
        await workflow.execute_activity(
            ARCHIVE_ACTIVITY,
            args=[self._state.task_id, workflow.info().workflow_id, workflow.info().run_id, reason],
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RECORD_RETRY,
        )

    def _upsert_search_attributes(self) -> None:
        s = self._state
        wake = next_wakeup(s, workflow.now())
        values: dict[str, Any] = {
            "light": s.light, "status": s.status, "level": s.level, "next": wake,
        }
        if values == self._sa_last:
            return
        spec = s.spec
        updates: list[SearchAttributeUpdate[Any]] = [
            sa.PLAN.value_set(spec.plan_code), sa.TASK.value_set(spec.task_code),
            sa.UNIT.value_set(spec.unit.code), sa.LIGHT.value_set(s.light),
            sa.STATUS.value_set(s.status), sa.LEVEL.value_set(s.level),
            sa.NEXT_DUE.value_set(wake) if wake is not None else sa.NEXT_DUE.value_unset(),
        ]
        if spec.parent_unit is not None:
            updates.append(sa.PARENT_UNIT.value_set(spec.parent_unit.code))
        workflow.upsert_search_attributes(updates)
        self._sa_last = values

    # --- commands --------------------------------------------------------------------------

    def _apply(self, name: str, payload: object) -> list[ev.Event] | Rejection:
        """Decide one command; a refusal is itself recorded, and changes nothing else."""
        self._needs_tick = True
        now = workflow.now()
        cmd = parse_command(name, payload)
        result: list[ev.Event] | Rejection = (
            cmd if isinstance(cmd, Rejection) else decide(self._state, cmd, now)
        )
        if isinstance(result, Rejection):
            actor = cmd.actor if isinstance(cmd, Command) else actor_of(payload)
            self._emit([reject(self._state, name, actor, result, _excerpt(payload), now)])
            return result
        self._emit(result)
        return result

    @staticmethod
    def _decode(args: Sequence[RawValue]) -> object:
        if len(args) != 1:
            raise ValueError(f"expected exactly one JSON object argument, got {len(args)}")
        return workflow.payload_converter().from_payload(args[0].payload)

    @workflow.signal(dynamic=True)
    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        # Raw values, so that no payload can be dropped by the SDK before we see it: a bad one
        # is recorded as a rejected command instead (see DESIGN.md, engine facts).
        try:
            payload = self._decode(args)
        except Exception as exc:  # noqa: BLE001 - anything undecodable is a malformed command
            self._needs_tick = True
            self._emit([reject(self._state, name, "unknown",
                               Rejection(code="malformed", reason=f"undecodable payload: {exc}"),
                               "", workflow.now())])
            return
        self._apply(name, payload)

    @workflow.update(dynamic=True)
    def on_update(self, name: str, args: Sequence[RawValue]) -> dict[str, Any]:
        payload = self._decode(args)
        result = self._apply(name, payload)
        if isinstance(result, Rejection):
            raise ApplicationError(result.reason, type=f"Rejected.{result.code}",
                                   non_retryable=True)
        return {"task_id": self._state.task_id, "accepted": True,
                "events": [ev.event_json(e) for e in result],
                "light": self._state.light, "status": self._state.status}

    @on_update.validator
    def validate_update(self, name: str, args: Sequence[RawValue]) -> None:
        # Malformed input never reaches history: the caller gets the reason, nothing is written.
        try:
            payload = self._decode(args)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"undecodable payload: {exc}") from exc
        cmd = parse_command(name, payload)
        if isinstance(cmd, Rejection):
            raise ValueError(cmd.reason)

    # --- queries -------------------------------------------------------------------------

    @workflow.query(name="state")
    def query_state(self) -> dict[str, Any]:
        out = self._state.model_dump(mode="json", exclude={"spec": {"ladders", "roster"}})
        wake = next_wakeup(self._state, workflow.now())
        out["next_wakeup"] = wake.isoformat() if wake else None
        out["recorded_seq"] = self._recorded_seq
        return out

    @workflow.query(name="check")
    def query_check(self, name: str, payload: dict[str, Any],
                    at: str | None = None) -> dict[str, Any]:
        """What `name` with `payload` would get, decided on the current state, changing nothing:
        lets a bulk import refuse a bad row without recording an attempt.

        `at` is the caller's clock (ISO time): in a query, workflow.now() is the time of the
        last activation, which for a task idle for days would make any later visit look like
        one "in the future"."""
        now = workflow.now()
        if at is not None:
            now = max(now, datetime.fromisoformat(at))
        cmd = parse_command(name, payload)
        result = cmd if isinstance(cmd, Rejection) else decide(self._state, cmd, now)
        if isinstance(result, Rejection):
            return {"ok": False, "code": result.code, "reason": result.reason}
        return {"ok": True, "events": [type(e).__name__ for e in result]}

    @workflow.query(name="events")
    def query_events(self, since_seq: int = 0) -> list[dict[str, Any]]:
        return [e for e in self._recent if int(e["seq"]) > since_seq]
