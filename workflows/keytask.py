"""KeyTask: one durable workflow per (plan, key task, responsible unit).

A thin shell around the domain decider: commands arrive as signals or updates, the clock as a
durable timer set to the domain's next wake-up; `decide`/`tick` give events, `evolve` folds
them, and one activity records each batch (events, read model, 督办单 notices) idempotently.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from domain import events as ev
    from domain.commands import (
        CALENDAR_COMMANDS,
        FIRST_COMMANDS,
        Command,
        Rejection,
        actor_of,
        parse_command,
        size_rejection,
    )
    from domain.decide import assign, decide, reject, tick
    from domain.evolve import evolve
    from domain.identity import prove, split_assertion
    from domain.projection import RecordBatch, notice_context, project, project_batch
    from domain.rules import next_wakeup
    from domain.state import TaskState
    from workflows import search as sa
    from workflows.inputs import Carried, KeyTaskInput

WORKFLOW_NAME = "KeyTask"
RECORD_ACTIVITY = "record_batch"
ARCHIVE_ACTIVITY = "archive_history"
RECENT_EVENTS_KEPT = 500
# Patches (workflow.patched): each guards a change in the commands the workflow emits, so the
# histories of earlier versions (tests/histories/) still replay.
DRAIN_PATCH = "drain-after-archive"
# Record in bounded batches, with the clock and continue-as-new looked at between batches, and
# carry unrecorded events into the next run (Carried.pending) instead of draining them.
BOUNDED_PATCH = "bounded-batches"
STRICT_PATCH = "strict-command-fields"  # bools/strings/numbers no longer coerced (commands.py)
SIZE_PATCH = "command-size-limit"  # a signal over MAX_COMMAND_BYTES is refused unread
REPLY_BY_PATCH = "reply-by-rule-time"  # 反馈时限 from the rung's rule time, to the end of day
# The 回头看 draw derived from the completion event (domain.decide.recheck_draw) and recorded
# with its basis, instead of workflow.random() taken on every tick.
RECHECK_DRAW_PATCH = "recheck-draw-from-record"
CALENDAR_COMMAND_PATCH = "update-calendar-command"  # update_calendar becomes known
# 签收: `sign_notice` becomes known, and a notice neither signed for nor answered by its 反馈时限
# is recorded as missed at that instant (the clock wakes for it).
NOTICE_PATCH = "notice-sign-off"
# A command may carry a signed assertion of its actor (domain.identity): verified before deciding
# by the policy in the task's input, and how the actor was proven recorded on its events.
SIGNED_PATCH = "signed-commands"
# One record_batch input: at most this many events and this many bytes of event JSON (a single
# larger event still goes, alone); its read model holds only the rows those events changed.
BATCH_MAX_EVENTS = 500
BATCH_MAX_BYTES = 256 * 1024
# What a continued run may be handed: unrecorded events up to this many bytes (the rest are
# recorded first), and the latest events for queries up to RECENT_MAX_BYTES.
CARRY_MAX_BYTES = 128 * 1024  # each: undecided signals, unrecorded events
RECENT_MAX_BYTES = 128 * 1024  # so a continued run's input stays under Temporal's 512 KB warning
# The server refuses a run's 10,001st signal and stops a history at 51,200 events: continue as
# new well before either, whatever the server's suggestion says, leaving room for the signals
# that arrive while the run winds down.
SIGNALS_PER_RUN = 4_000
# Signals decided per pass of the loop (each pass ends its workflow task at the record
# activity), so no workflow task runs long however many signals one delivers. Small, because
# the server fails a workflow task once 100 events are buffered behind it (FORCE_CLOSE_COMMAND),
# and a failed task costs the worker a replay of the whole run: a task deciding 500 signals on a
# busy 2-core host lasted over a second, during which a flood of 100 signals/s overran it.
INBOX_PER_PASS = 100
HISTORY_EVENTS_PER_RUN = 10_000
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                           maximum_interval=timedelta(minutes=5))


@dataclass(frozen=True, slots=True)
class _Unrecorded:
    """An event decided but not yet recorded, with what recording it needs."""

    event: ev.Event
    data: dict[str, Any]  # its JSON, as recorded
    size: int  # bytes of that JSON
    state: TaskState  # the state right after it


def _json_size(e: dict[str, Any]) -> int:
    return len(json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


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
        self._signals_this_run = 0
        # Decided here, before any handler runs: a new run's signals are queued, not decided
        # in their handlers (a first task holding thousands of them must still finish in time).
        self._bounded = workflow.patched(BOUNDED_PATCH)
        self._inbox: list[tuple[str, Sequence[RawValue]]] = []  # signals not yet decided
        self._received = 0  # signals queued this run (carried ones included) ...
        self._decided = 0  # ... and decided: an update waits for those before it
        # (a batch's read model describes the state at the batch's last event).
        # Decided, not yet recorded: each event with its JSON, its size, and the state right after
        # it (a batch's read model describes the state at the batch's last event).
        self._unrecorded: list[_Unrecorded] = []
        self._recorded_state: TaskState | None = None  # the state at _recorded_seq
        # Signed assertions already used (their digests), so a signed command counts once.
        self._used_assertions: set[str] = set()
        if inp.carried is not None:
            self._state: TaskState = inp.carried.state
            self._recent: list[dict[str, Any]] = list(inp.carried.recent)
            self._recorded_seq = inp.carried.recorded_seq
            self._recorded_state = inp.carried.state
            self._used_assertions = {
                str(d["proof"]["assertion"]) for d in self._recent
                if isinstance(d.get("proof"), dict) and d["proof"].get("assertion")}
            for sig in inp.carried.signals:
                self._inbox.append((sig["name"], [RawValue(Payload.FromString(base64.b64decode(p)))
                                                  for p in sig["payloads"]]))
            self._received = len(self._inbox)
            for data in inp.carried.pending:  # already in `recent`: folded, not pushed again
                e = ev.parse_event(data)
                self._state = evolve(self._state, e)
                self._queue(e, data)
        else:
            first = assign(inp.spec, workflow.now())
            self._state = evolve(None, first)
            self._recent = []
            self._recorded_seq = 0
            self._push(first)

    # --- the loop ------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: KeyTaskInput) -> dict[str, Any]:
        if self._bounded:
            return await self._run_bounded(inp)
        return await self._run_unbounded(inp)

    async def _run_bounded(self, inp: KeyTaskInput) -> dict[str, Any]:
        """One bounded batch per pass; between batches the clock ticks and continue-as-new is
        considered, so a flood of commands neither stalls the ladder nor outgrows the run."""
        while True:
            self._decide_signals(INBOX_PER_PASS)
            self._tick()
            mark = self._received
            await self._flush_batch()
            if self._state.status == "closed" and not self._unrecorded and not self._inbox:
                break
            if self._must_continue() or self._should_continue() and self._quiet(mark):
                await self._continue_as_new(inp)
            if self._unrecorded or self._needs_tick or self._inbox:
                continue  # more to decide or record, or commands came in while recording
            await self._sleep_until_due()
        await self._settle()
        await self._record_rest(inp)
        await self._archive("closed")
        # Refusals of commands that arrived while the run archived itself.
        await self._record_rest(inp)
        return {"task_id": self._state.task_id, "status": self._state.status,
                "last_seq": self._state.last_seq}

    async def _sleep_until_due(self) -> None:
        """One durable timer to the next instant time alone changes something; a command
        (`_needs_tick`) wakes the loop earlier."""
        now = workflow.now()
        wake = next_wakeup(self._state, now, reply_missed=workflow.patched(NOTICE_PATCH))
        timeout = None if wake is None else max(wake - now, timedelta(milliseconds=1))
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._needs_tick, timeout=timeout,
                                          timeout_summary="next deadline or ladder rung")

    async def _record_rest(self, inp: KeyTaskInput) -> None:
        """Record what is unrecorded (a closed task still records refused commands), batch by
        batch; past the run's limits the rest goes to a new run."""
        while self._unrecorded or self._inbox:
            self._decide_signals(INBOX_PER_PASS)
            await self._flush_batch()
            if (self._unrecorded or self._inbox) and self._should_continue():
                await self._continue_as_new(inp)

    async def _settle(self) -> None:
        """Let update handlers finish (each waits for the signals queued before it), deciding
        queued signals a pass at a time, the clock ticking between passes."""
        while not workflow.all_handlers_finished():
            if self._inbox:
                self._decide_signals(INBOX_PER_PASS)
                self._tick()
                await self._flush_batch()
            else:
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() or bool(self._inbox))

    def _inbox_size(self) -> int:
        return sum(len(a.payload.data) + len(n) for n, args in self._inbox for a in args)

    async def _continue_as_new(self, inp: KeyTaskInput) -> None:
        await self._settle()
        self._tick()
        # The next run's input stays small: what does not fit is decided and recorded here.
        while self._inbox_size() > CARRY_MAX_BYTES:
            self._decide_signals(INBOX_PER_PASS)
            self._tick()
            await self._flush_batch()
        while (self._recorded_state is None
               or sum(u.size for u in self._unrecorded) > CARRY_MAX_BYTES):
            await self._flush_batch()
        await self._archive("continued_as_new")
        if not workflow.all_handlers_finished():
            # An update came during the archive: it is answered by this run, after the
            # signals sent before it (one activity's worth).
            self._decide_signals(None)
            await workflow.wait_condition(workflow.all_handlers_finished)
        assert self._recorded_state is not None
        # Undecided signals and unrecorded events go to the next run, which takes them first.
        signals = [{"name": n, "payloads": [base64.b64encode(a.payload.SerializeToString()).decode()
                                            for a in args]} for n, args in self._inbox]
        workflow.continue_as_new(KeyTaskInput(
            spec=self._state.spec,
            carried=Carried(state=self._recorded_state, recent=self._recent_tail(),
                            recorded_seq=self._recorded_seq,
                            pending=[u.data for u in self._unrecorded], signals=signals),
            continue_after_events=inp.continue_after_events,
            auth=inp.auth,
        ))

    def _decide_signals(self, limit: int | None) -> None:
        """Decide queued signals, oldest first, at most `limit` of them."""
        take = len(self._inbox) if limit is None else min(limit, len(self._inbox))
        if take:
            chunk, self._inbox = self._inbox[:take], self._inbox[take:]
            for name, args in chunk:
                self._decided += 1
                self._signal(name, args)

    def _recent_tail(self) -> list[dict[str, Any]]:
        kept: list[dict[str, Any]] = []
        size = 0
        for e in reversed(self._recent[-RECENT_EVENTS_KEPT:]):
            size += _json_size(e)
            if kept and size > RECENT_MAX_BYTES:
                break
            kept.append(e)
        return kept[::-1]

    async def _flush_batch(self) -> None:
        """Record the oldest unrecorded events, at most BATCH_MAX_EVENTS / BATCH_MAX_BYTES."""
        if self._unrecorded:
            n, size = 0, 0
            for u in self._unrecorded:
                if n and (n >= BATCH_MAX_EVENTS or size + u.size > BATCH_MAX_BYTES):
                    break
                n, size = n + 1, size + u.size
            taken, self._unrecorded = self._unrecorded[:n], self._unrecorded[n:]
            batch, jsons, state = [u.event for u in taken], [u.data for u in taken], taken[-1].state
            notices = [notice_context(state, e) for e in batch if isinstance(e, ev.EscalationFired)]
            await workflow.execute_activity(
                RECORD_ACTIVITY,
                RecordBatch(task_id=state.task_id, events=jsons,
                            read_model=project_batch(state, batch),
                            notices=notices),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RECORD_RETRY,
                summary=f"record {len(batch)} event(s)",
            )
            self._recorded_seq = batch[-1].seq
            self._recorded_state = state
        self._upsert_search_attributes()

    async def _run_unbounded(self, inp: KeyTaskInput) -> dict[str, Any]:
        """The loop of runs recorded before BOUNDED_PATCH (kept so their histories replay)."""
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
                    auth=inp.auth,
                ))
            if self._needs_tick:
                continue  # commands came in while recording: let the clock see them first
            await self._sleep_until_due()
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

    def _quiet(self, mark: int) -> bool:
        """No signal waits and none came while the last batch was recorded. The server fails a
        workflow task that ends the run while events arrive (UNHANDLED_COMMAND), so a suggested
        continue-as-new waits for a lull in a flood; `_must_continue` bounds the wait."""
        return not self._inbox and self._received == mark

    def _must_continue(self) -> bool:
        """The run's own limits, which do not wait for a lull: the server refuses a run's
        10,001st signal and a replay after an evicted or failed task grows with the run."""
        limit = self._inp.continue_after_events
        if limit is not None and self._events_this_run >= limit:
            return True
        return (self._signals_this_run >= SIGNALS_PER_RUN
                or workflow.info().get_current_history_length() >= HISTORY_EVENTS_PER_RUN)

    def _should_continue(self) -> bool:
        limit = self._inp.continue_after_events
        if limit is not None and self._events_this_run >= limit:
            return True
        info = workflow.info()
        if info.is_continue_as_new_suggested():
            return True
        if not self._bounded:
            return False
        # Our own limits too: the server's suggestion counts history events and bytes only, and
        # comes late for a flood of signals, which has a limit of its own.
        return (self._signals_this_run >= SIGNALS_PER_RUN
                or info.get_current_history_length() >= HISTORY_EVENTS_PER_RUN)

    def _queue(self, e: ev.Event, data: dict[str, Any]) -> None:
        self._unrecorded.append(_Unrecorded(e, data, _json_size(data), self._state))

    def _push(self, e: ev.Event) -> None:
        data = ev.event_json(e)
        self._queue(e, data)
        self._recent.append(data)
        if e.proof is not None and e.proof.assertion is not None:
            self._used_assertions.add(e.proof.assertion)
        if len(self._recent) > 2 * RECENT_EVENTS_KEPT:
            self._recent = self._recent[-RECENT_EVENTS_KEPT:]
        self._events_this_run += 1

    def _emit(self, events: Sequence[ev.Event]) -> None:
        for e in events:
            self._state = evolve(self._state, e)
            self._push(e)

    def _tick(self) -> None:
        self._needs_tick = False
        # Histories from before RECHECK_DRAW_PATCH took a random number on every tick (so how
        # often the workflow woke decided the draw); they replay with exactly that.
        draw = None if workflow.patched(RECHECK_DRAW_PATCH) else workflow.random().randint(0, 99)
        self._emit(tick(self._state, workflow.now(), draw,
                        reply_by_rule_time=workflow.patched(REPLY_BY_PATCH),
                        reply_missed=workflow.patched(NOTICE_PATCH)))

    async def _flush(self) -> None:
        while self._unrecorded:
            batch, self._unrecorded = [u.event for u in self._unrecorded], []
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
        wake = next_wakeup(s, workflow.now(), reply_missed=workflow.patched(NOTICE_PATCH))
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
        signed = workflow.patched(SIGNED_PATCH)
        raw_assertion = None
        if signed:
            payload, raw_assertion = split_assertion(payload)
        cmd = parse_command(name, payload, lax=not workflow.patched(STRICT_PATCH),
                            known=self._known_commands())
        proof: ev.ActorProof | None = None
        result: list[ev.Event] | Rejection
        if isinstance(cmd, Rejection):
            result = cmd
        else:
            proven = (prove(self._inp.auth, workflow_id=self._state.task_id, command=name,
                            payload=payload, raw_assertion=raw_assertion, actor=cmd.actor,
                            now=now, seen=self._used_assertions)
                      if signed and isinstance(payload, dict) else None)
            if isinstance(proven, Rejection):
                result = proven
            else:
                proof = proven
                result = decide(self._state, cmd, now)
        if isinstance(result, Rejection):
            actor = cmd.actor if isinstance(cmd, Command) else actor_of(payload)
            refusal = reject(self._state, name, actor, result, _excerpt(payload), now)
            self._emit([refusal.model_copy(update={"proof": proof})])
            return result
        if proof is not None and isinstance(cmd, Command):
            # The events the actor caused carry the proof; the system's consequences do not.
            actor = cmd.actor
            result = [e.model_copy(update={"proof": proof}) if e.actor == actor else e
                      for e in result]
        self._emit(result)
        return result

    @staticmethod
    def _known_commands() -> frozenset[str] | None:
        """The commands this history knows: a history recorded before a command was added
        answered its name as unknown, listing the commands known then."""
        if not workflow.patched(CALENDAR_COMMAND_PATCH):
            return FIRST_COMMANDS
        if not workflow.patched(NOTICE_PATCH):
            return CALENDAR_COMMANDS
        return None

    @staticmethod
    def _decode(args: Sequence[RawValue]) -> object:
        if len(args) != 1:
            raise ValueError(f"expected exactly one JSON object argument, got {len(args)}")
        return workflow.payload_converter().from_payload(args[0].payload)

    @staticmethod
    def _size(args: Sequence[RawValue]) -> int:
        """The payload's size as sent, read before anything decodes it."""
        return sum(len(a.payload.data) for a in args)

    @staticmethod
    def _raw_excerpt(args: Sequence[RawValue]) -> str:
        head = args[0].payload.data[:200] if args else b""
        return head.decode("utf-8", errors="replace") + " …"

    @workflow.signal(dynamic=True)
    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        # Raw values, so that no payload can be dropped by the SDK before we see it: a bad one
        # is recorded as a rejected command instead (a typed handler would drop it with a log line).
        self._signals_this_run += 1
        if self._bounded:
            # Queued, decided by the loop a bounded number per workflow task: one task may
            # deliver thousands of signals, and deciding them all here could outlast it.
            self._needs_tick = True
            self._inbox.append((name, args))
            self._received += 1
            return
        self._signal(name, args)

    def _signal(self, name: str, args: Sequence[RawValue]) -> None:
        too_large = size_rejection(name, self._size(args))
        if too_large is not None and workflow.patched(SIZE_PATCH):
            # Refused unread: decoding it would cost the workflow task, and recording it would
            # put the whole payload in the store; a short excerpt says what it was.
            self._needs_tick = True
            self._emit([reject(self._state, name, "unknown", too_large, self._raw_excerpt(args),
                               workflow.now())])
            return
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
    async def on_update(self, name: str, args: Sequence[RawValue]) -> dict[str, Any]:
        mark = self._received
        if self._decided < mark:  # signals sent before this update are decided first
            await workflow.wait_condition(lambda: self._decided >= mark)
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
        # Size first, unread: the reason must not repeat a payload that is too big to carry.
        too_large = size_rejection(name, self._size(args))
        if too_large is not None:
            raise ApplicationError(too_large.reason, type="Rejected.too_large",
                                   non_retryable=True)
        # A refusal here is final (non-retryable, typed like the handler's), and carries its
        # reason once: no chained cause repeating it.
        if len(args) != 1:
            raise ApplicationError(f"{name}: expected exactly one JSON object argument, got "
                                   f"{len(args)}", type="Rejected.malformed", non_retryable=True)
        try:
            payload = self._decode(args)
        except Exception as exc:  # noqa: BLE001
            raise ApplicationError(f"undecodable payload: {exc}", type="Rejected.malformed",
                                   non_retryable=True) from None
        # The signed assertion is checked by the handler, which records a bad one.
        cmd = parse_command(name, split_assertion(payload)[0])
        if isinstance(cmd, Rejection):
            raise ApplicationError(cmd.reason, type=f"Rejected.{cmd.code}", non_retryable=True)

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
        cmd = parse_command(name, split_assertion(payload)[0])
        result = cmd if isinstance(cmd, Rejection) else decide(self._state, cmd, now)
        if isinstance(result, Rejection):
            return {"ok": False, "code": result.code, "reason": result.reason}
        return {"ok": True, "events": [type(e).__name__ for e in result]}

    @workflow.query(name="events")
    def query_events(self, since_seq: int = 0) -> list[dict[str, Any]]:
        return [e for e in self._recent if int(e["seq"]) > since_seq]
