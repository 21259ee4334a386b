"""The auditor's replay: run engine histories through `temporalio.worker.Replayer` with the
current KeyTask code, capture the domain events that replay produces, and compare them with the
event store (and with what the history itself says was sent to `record_batch`).

How the events are captured: the workflow hands every batch of events to the `record_batch`
activity as a `RecordBatch`. The Replayer is given a workflow outbound interceptor whose
`start_activity` copies those events into a collector kept in this module; the module is passed
through the sandbox (see `workflow_runner`), so the sandboxed workflow and this code share it.

Three checks, any of which makes a task divergent (first bad seq named):
- the Replayer itself: a non-deterministic change to the workflow fails the replay;
- the history: the events the replay hands to `record_batch` equal the ones the history's
  `ActivityTaskScheduled` input recorded when the task really ran;
- the store: per seq, canonical JSON equality between replayed and stored events; a replayed
  batch whose activity completed must be stored, and a stored event must be reproduced by some
  run (a missing or extra seq is a divergence).

A task continued as new has several runs; each run's captured events cover a seq range, and the
runs are compared together with the whole stored record.

Besides the replay, `verify_task` checks what the store says elsewhere about the task: a task
with no events that still has read-model rows, archives, notices, outbox rows, a checkpointed
head or a Temporal run that recorded something (its events were deleted); every archive's
sha256; the read models (tasks, inspections, findings) against the fold of the stored events.
Causes (a deleted record, an altered archive, a forged read model) are listed before the
per-seq divergences they bring about. What none of this covers is in `NOT_COVERED`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    Interceptor,
    Replayer,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from audit.chain_check import task_sources, verify_task_chain
from domain.canonical import canonical_json
from domain.events import event_json, parse_event
from domain.hashchain import ChainVerdict

__all__ = [
    "CAUSE_KINDS",
    "ALL_QUERY",
    "CLOSED_QUERY",
    "NOT_COVERED",
    "ArchiveOutcome",
    "Batch",
    "CaptureInterceptor",
    "Divergence",
    "RunReplay",
    "TaskVerdict",
    "archive_closed_runs",
    "archive_run",
    "compare_runs",
    "fetch_task_histories",
    "history_from_json",
    "make_replayer",
    "replay_histories",
    "replay_history_file",
    "task_id_of",
    "task_ids_in_visibility",
    "verify_task",
    "verify_tasks",
    "workflow_runner",
]

RECORD_ACTIVITY = "record_batch"  # workflows.keytask.RECORD_ACTIVITY (imported lazily below)
MAX_DIVERGENCES = 20
# Findings that explain others (the seqs a deleted record or an altered archive leaves
# uncovered): listed first, in this order, and never cut off by MAX_DIVERGENCES.
CAUSE_KINDS = ("no-events", "archive", "read-model")
# What `audit verify` does not check, said in its output and its --help.
NOT_COVERED = (
    "events.recorded_at (when a row was written) is not hashed: a changed one is not seen",
    "notices and outbox rows are not compared with the events (they only show that a task "
    "exists)",
    "Temporal's search attributes (visibility) are not compared with the events",
    "tasks.updated_at and archives.archived_at are not checked",
    "without --checkpoint, a cut-off tail or a recomputed chain is seen only by the replay "
    "(not with --chain-only)",
)
Source = Literal["live", "archive", "file"]

_CLOSE_TYPES = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued_as_new",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "canceled",
}


# --- capture (runs inside the sandbox: this module is passed through) -----------------------

_lock = threading.Lock()
_captured: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}


def _capture(workflow_id: str, run_id: str, batch: object) -> None:
    events = getattr(batch, "events", None)
    if events is None and isinstance(batch, Mapping):
        events = batch.get("events")
    if not isinstance(events, list):
        return
    # A JSON round trip: a private copy in exactly the stored JSON types.
    copy = json.loads(json.dumps(events, ensure_ascii=False, default=str))
    with _lock:
        _captured.setdefault((workflow_id, run_id), []).append(copy)


def _take(workflow_id: str, run_id: str) -> list[list[dict[str, Any]]]:
    with _lock:
        return _captured.pop((workflow_id, run_id), [])


class _CaptureOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        if input.activity == RECORD_ACTIVITY and input.args:
            info = workflow.info()
            _capture(info.workflow_id, info.run_id, input.args[0])
        return super().start_activity(input)


class _CaptureInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_CaptureOutbound(outbound))


class CaptureInterceptor(Interceptor):
    """Give to a Replayer: every `record_batch` call's events land in this module's collector."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _CaptureInbound


def workflow_runner(sandboxed: bool = True) -> Any:
    """The worker's sandbox, plus this module passed through (so the collector is shared).

    `sandboxed=False` runs the workflow code directly: about 2.5 times faster on long histories
    (bench/bench_replay.py), and still compared event by event; the sandbox, which is what the
    worker runs and what CI replays with, is the faithful default."""
    from temporalio.worker import UnsandboxedWorkflowRunner
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    from worker import PASSTHROUGH

    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH, __name__)
    )


def make_replayer(executor: concurrent.futures.ThreadPoolExecutor | None = None,
                  sandboxed: bool = True) -> Replayer:
    """A Replayer with the current KeyTask, the project's converter and the capture interceptor."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    from workflows.keytask import RECORD_ACTIVITY as wf_record_activity
    from workflows.keytask import KeyTask

    assert wf_record_activity == RECORD_ACTIVITY, "record activity renamed: update replay.py"
    return Replayer(
        workflows=[KeyTask],
        data_converter=pydantic_data_converter,
        interceptors=[CaptureInterceptor()],
        workflow_runner=workflow_runner(sandboxed),
        workflow_task_executor=executor,
    )


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Divergence:
    """One disagreement. `seq` is the domain sequence number it concerns (None: none applies)."""

    seq: int | None
    # replay | history | store | missing | extra | uncovered | unrecorded, and the causes
    # (CAUSE_KINDS): no-events | archive | read-model
    kind: str
    reason: str
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "reason": self.reason, "run_id": self.run_id}


@dataclass(slots=True)
class Batch:
    """One replayed `record_batch` call: its events and whether the history shows it done."""

    events: list[dict[str, Any]]
    recorded: bool  # its activity completed in this history: the store must hold it
    sent: list[dict[str, Any]] | None  # the events the history's ActivityTaskScheduled carried


@dataclass(slots=True)
class RunReplay:
    """One run's history replayed with the current code."""

    workflow_id: str
    run_id: str
    task_id: str | None
    source: Source
    history_events: int
    close: str | None  # completed, continued_as_new, ... ; None while the history is open
    previous_run_id: str | None  # the run this one continued (continue-as-new)
    started_at: float
    batches: list[Batch] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0
    # Decided but never handed to record_batch: (first, last) seq, from the state the run
    # received or passed on (continue-as-new) or the last_seq its result reports.
    unrecorded: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b.events]

    @property
    def seq_range(self) -> tuple[int, int] | None:
        evts = self.events
        return (int(evts[0]["seq"]), int(evts[-1]["seq"])) if evts else None

    def to_json(self) -> dict[str, Any]:
        rng = self.seq_range
        return {
            "run_id": self.run_id, "source": self.source, "history_events": self.history_events,
            "close": self.close, "first_seq": rng[0] if rng else None,
            "last_seq": rng[1] if rng else None, "domain_events": len(self.events),
            "pending_events": sum(len(b.events) for b in self.batches if not b.recorded),
            "failure": self.failure, "seconds": round(self.seconds, 4),
            "unrecorded": [list(u) for u in self.unrecorded],
        }


@dataclass(slots=True)
class TaskVerdict:
    task_id: str
    chain: ChainVerdict | None
    runs: list[RunReplay]
    stored_events: int
    divergences: list[Divergence]
    notes: list[str] = field(default_factory=list)
    replayed: bool = True  # False: no engine history could be found (live or archived)
    # Where the task exists besides its events (read models, archives, notices, outbox, the
    # checkpoint, Temporal).
    sources: list[str] = field(default_factory=list)
    # Set when the archive was asked for and the task, still running, has none yet: the
    # replay could not be made, which is not a finding.
    no_archive: str | None = None

    @property
    def ok(self) -> bool:
        return ((self.chain is None or self.chain.ok) and self.replayed and not self.divergences
                and self.no_archive is None)

    @property
    def finding(self) -> bool:
        """Something is wrong with the record (not merely unverifiable yet)."""
        return not self.ok and self.verdict != "no-archive"

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [d.seq for d in self.divergences if d.seq is not None]
        if self.chain is not None and not self.chain.ok and self.chain.first_bad_seq is not None:
            seqs.append(self.chain.first_bad_seq)
        return min(seqs) if seqs else None

    @property
    def verdict(self) -> str:
        if self.chain is not None and not self.chain.ok:
            return "tampered"
        if any(d.kind in ("no-events", "archive") for d in self.divergences):
            return "tampered"
        if self.divergences:
            return "divergent"
        if self.no_archive is not None:
            return "no-archive"
        if not self.replayed:
            return "no-history"
        return "ok"

    @property
    def reason(self) -> str | None:
        """The first thing to read: a deleted record or an altered or missing archive, else
        the earliest bad seq (chain first), else a read model that is not the fold (derived
        from the events, it is what an edit of them brings about last)."""
        causes = [d for d in self.divergences if d.kind in CAUSE_KINDS and d.kind != "read-model"]
        if causes:
            first = min(causes, key=_order)
            return f"{first.kind}: {first.reason}"
        candidates: list[tuple[int, int, str]] = []
        if self.chain is not None and not self.chain.ok:
            candidates.append((self.chain.first_bad_seq or 0, 0, f"chain: {self.chain.reason}"))
        for d in self.divergences:
            rank = 2 if d.kind == "read-model" else 1
            candidates.append((d.seq if d.seq is not None else 1 << 62, rank,
                               f"{d.kind}: {d.reason}"))
        if candidates:
            return min(candidates)[2]
        if self.no_archive is not None:
            return self.no_archive
        if not self.replayed:
            return "no engine history found, live or archived: replay not possible"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id, "verdict": self.verdict, "ok": self.ok,
            "finding": self.finding, "first_bad_seq": self.first_bad_seq, "reason": self.reason,
            "sources": self.sources,
            "chain": None if self.chain is None else {
                "ok": self.chain.ok, "first_bad_seq": self.chain.first_bad_seq,
                "reason": self.chain.reason, "checked": self.chain.checked,
                "head": list(self.chain.head) if self.chain.head else None,
            },
            "stored_events": self.stored_events,
            "replayed_events": sum(len(r.events) for r in self.runs),
            "runs": [r.to_json() for r in self.runs],
            "divergences": [d.to_json() for d in self.divergences],
            "notes": self.notes,
        }


# --- histories -------------------------------------------------------------------------------


def _payload_json(payloads: Sequence[Any]) -> Any:
    """The first payload as JSON (the pydantic converter writes json/plain), or None."""
    if not payloads:
        return None
    p = payloads[0]
    if p.metadata.get("encoding", b"") != b"json/plain":
        return None
    try:
        return json.loads(p.data)
    except ValueError:
        return None


def _started_input(events: Sequence[HistoryEvent]) -> Any:
    if not events or not events[0].HasField("workflow_execution_started_event_attributes"):
        return None
    return _payload_json(events[0].workflow_execution_started_event_attributes.input.payloads)


def task_id_of(history: WorkflowHistory | Sequence[HistoryEvent]) -> str | None:
    """The task a KeyTask history belongs to, from its start input (KeyTaskInput.spec)."""
    events = history.events if isinstance(history, WorkflowHistory) else history
    inp = _started_input(events)
    try:
        return str(inp["spec"]["task_id"])
    except (TypeError, KeyError):
        return None


def history_from_json(text: str | Mapping[str, Any], workflow_id: str | None = None
                      ) -> WorkflowHistory:
    """Parse `temporal workflow show --output json`, `WorkflowHistory.to_json()` or an archive.
    The workflow id defaults to the task id in the start input (KeyTask's id is its task id)."""
    parsed = WorkflowHistory.from_json("unknown", dict(text) if isinstance(text, Mapping) else text)
    if not parsed.events:
        raise ValueError("the history has no events")
    wid = workflow_id or task_id_of(parsed.events) or "unknown"
    return WorkflowHistory(wid, parsed.events)


def _close_of(events: Sequence[HistoryEvent]) -> str | None:
    return _CLOSE_TYPES.get(events[-1].event_type) if events else None


def _previous_run(events: Sequence[HistoryEvent]) -> str | None:
    if not events or not events[0].HasField("workflow_execution_started_event_attributes"):
        return None
    return events[0].workflow_execution_started_event_attributes.continued_execution_run_id or None


def _record_activities(events: Sequence[HistoryEvent]) -> list[tuple[bool, Any]]:
    """Per `record_batch` activity scheduled, in order: (completed?, the input it carried)."""
    scheduled: list[tuple[int, Any]] = []
    completed: set[int] = set()
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = e.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == RECORD_ACTIVITY:
                scheduled.append((e.event_id, _payload_json(attrs.input.payloads)))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed.add(e.activity_task_completed_event_attributes.scheduled_event_id)
    return [(eid in completed, sent) for eid, sent in scheduled]


# --- replay ----------------------------------------------------------------------------------


async def replay_histories(
    histories: Iterable[tuple[WorkflowHistory, Source]],
    replayer: Replayer | None = None,
) -> list[RunReplay]:
    """Replay each history with the current KeyTask code (one Replayer for all), capturing the
    domain events each run hands to `record_batch`. Never raises on a replay failure: it is
    reported on the run (`failure`)."""
    items = list(histories)
    if not items:
        return []
    executor = None
    if replayer is None:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                         thread_name_prefix="duban-replay")
        replayer = make_replayer(executor)
    out: list[RunReplay] = []
    clock: dict[str, float] = {}

    async def feed() -> AsyncIterator[WorkflowHistory]:
        for history, _ in items:
            _take(history.workflow_id, history.run_id)  # nothing stale from an earlier replay
            clock["t"] = time.perf_counter()
            yield history

    try:
        async with replayer.workflow_replay_iterator(feed()) as results:
            index = 0
            async for result in results:
                seconds = time.perf_counter() - clock["t"]
                history, source = items[index]
                index += 1
                out.append(_run_of(history, source, result.replay_failure, seconds))
    finally:
        if executor is not None:
            executor.shutdown(wait=False)
    return out


def _run_of(history: WorkflowHistory, source: Source, failure: Exception | None,
            seconds: float) -> RunReplay:
    events = history.events
    captured = _take(history.workflow_id, history.run_id)
    activities = _record_activities(events)
    first = events[0] if events else None
    run = RunReplay(
        workflow_id=history.workflow_id, run_id=history.run_id, task_id=task_id_of(events),
        source=source, history_events=len(events), close=_close_of(events),
        previous_run_id=_previous_run(events),
        started_at=first.event_time.ToSeconds() if first is not None else 0.0,
        failure=None if failure is None else f"{type(failure).__name__}: {failure}"[:600],
        seconds=seconds,
    )
    for i, batch in enumerate(captured):
        recorded, sent = activities[i] if i < len(activities) else (False, None)
        sent_events = sent.get("events") if isinstance(sent, dict) else None
        run.batches.append(Batch(events=batch, recorded=recorded,
                                 sent=sent_events if isinstance(sent_events, list) else None))
    run.unrecorded = _unrecorded(events)
    return run


def _carried_gap(inp: Any, what: str) -> tuple[int, int, str] | None:
    try:
        last, recorded = int(inp["carried"]["state"]["last_seq"]), int(inp["carried"]["recorded_seq"])
    except (TypeError, KeyError, ValueError):
        return None
    return (recorded + 1, last, what) if last > recorded else None


def _unrecorded(events: Sequence[HistoryEvent]) -> list[tuple[int, int, str]]:
    """Events a run decided (its state counts them) that no `record_batch` call carried."""
    gaps: list[tuple[int, int, str]] = []
    gap = _carried_gap(_started_input(events), "the state this run started from")
    if gap:
        gaps.append(gap)
    last = events[-1] if events else None
    if last is not None and last.HasField("workflow_execution_continued_as_new_event_attributes"):
        inp = _payload_json(last.workflow_execution_continued_as_new_event_attributes.input.payloads)
        gap = _carried_gap(inp, "the state this run continued as new with")
        if gap:
            gaps.append(gap)
    if last is not None and last.HasField("workflow_execution_completed_event_attributes"):
        result = _payload_json(last.workflow_execution_completed_event_attributes.result.payloads)
        sent = [e.get("seq") for _, s in _record_activities(events) if isinstance(s, dict)
                for e in s.get("events", []) if isinstance(e, dict)]
        top = max((q for q in sent if isinstance(q, int)), default=0)
        result_last = result.get("last_seq") if isinstance(result, dict) else None
        if isinstance(result_last, int) and result_last > top:
            gaps.append((top + 1, result_last, "the result this run returned"))
    return gaps


async def replay_history_file(text: str, workflow_id: str | None = None,
                              sandboxed: bool = True) -> RunReplay:
    """Replay one history given as JSON text (CLI export, `to_json()` or an archive)."""
    history = history_from_json(text, workflow_id)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                     thread_name_prefix="duban-replay")
    try:
        return (await replay_histories([(history, "file")], make_replayer(executor, sandboxed)))[0]
    finally:
        executor.shutdown(wait=False)


# --- comparison ------------------------------------------------------------------------------


def _canon(event: Mapping[str, Any]) -> bytes:
    """An event's canonical form at the current schema: a stored or recorded event of an older
    version is upcast first (`domain.events.parse_event`), so an event type's new version does
    not make every old record "differ" from its replay. (The stored bytes themselves are
    checked by the hash chain, as stored.) A payload no current model reads is compared as is."""
    try:
        return canonical_json(event_json(parse_event(event)))
    except ValueError:
        return canonical_json(event)


def _differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or _canon({"v": a[k]}) != _canon({"v": b[k]})]


def _event_diff(replayed: Mapping[str, Any], other: Mapping[str, Any], what: str) -> str:
    fields = _differing_fields(replayed, other)
    shown = ", ".join(fields[:6]) + (" …" if len(fields) > 6 else "")
    return (f"{what} {other.get('type')} differs from the replayed {replayed.get('type')} "
            f"in {shown}")


def compare_runs(
    runs: Sequence[RunReplay],
    stored: Sequence[Mapping[str, Any]] | None,
    *,
    whole_task: bool,
    task_id: str | None = None,
) -> list[Divergence]:
    """Divergences between the replayed runs and the stored events, first seq first.

    `whole_task`: the runs are all of a task's runs, so every stored event must be reproduced
    (a stored seq no run produced is `uncovered` before the replay's range, `extra` after it).
    Otherwise only the seqs the runs cover are compared (one history among several).
    `stored=None`: no store at hand; the replay is checked against the histories only."""
    found: list[Divergence] = []
    produced: dict[int, tuple[dict[str, Any], bool, str]] = {}
    for run in runs:
        for first, last, where in run.unrecorded:
            span = f"seq {first}" if first == last else f"seqs {first}..{last}"
            found.append(Divergence(first, "unrecorded", f"{span} decided in run {run.run_id} "
                                    f"({where} counts them) but never sent to record_batch",
                                    run.run_id))
        if run.failure is not None:
            rng = run.seq_range
            found.append(Divergence(rng[1] + 1 if rng else None, "replay",
                                    f"the current workflow code does not replay run {run.run_id}: "
                                    f"{run.failure}", run.run_id))
        if task_id is not None and run.task_id is not None and run.task_id != task_id:
            rng = run.seq_range
            found.append(Divergence(rng[0] if rng else None, "history",
                                    f"run {run.run_id} is a history of task {run.task_id!r}, "
                                    f"not {task_id!r}", run.run_id))
        for batch in run.batches:
            if batch.sent is not None:
                sent_by_seq = {e.get("seq"): e for e in batch.sent if isinstance(e, dict)}
                if [e.get("seq") for e in batch.events] != list(sent_by_seq):
                    seq0 = batch.events[0].get("seq") if batch.events else None
                    found.append(Divergence(seq0 if isinstance(seq0, int) else None, "history",
                                            "the replay sends other events to record_batch than "
                                            "the history recorded", run.run_id))
                else:
                    for e in batch.events:
                        if _canon(e) != _canon(sent_by_seq[e["seq"]]):
                            found.append(Divergence(int(e["seq"]), "history", _event_diff(
                                e, sent_by_seq[e["seq"]], "the history's"), run.run_id))
                            break
            for e in batch.events:
                seq = int(e["seq"])
                if seq in produced:
                    if _canon(produced[seq][0]) != _canon(e):
                        found.append(Divergence(seq, "replay", f"runs {produced[seq][2]} and "
                                                f"{run.run_id} replay different events", run.run_id))
                    continue
                produced[seq] = (e, batch.recorded, run.run_id)
    if stored is None:
        found.sort(key=lambda d: (d.seq if d.seq is not None else 1 << 62, d.kind))
        return _dedupe(found)[:MAX_DIVERGENCES]
    stored_by_seq = {int(e["seq"]): e for e in stored}
    lo = min(produced) if produced else None
    hi = max(produced) if produced else None
    for seq in sorted(set(produced) | set(stored_by_seq)):
        mine = produced.get(seq)
        theirs = stored_by_seq.get(seq)
        if mine is not None and theirs is not None:
            if _canon(mine[0]) != _canon(theirs):
                found.append(Divergence(seq, "store", _event_diff(mine[0], theirs, "stored"),
                                        mine[2]))
        elif mine is not None:
            if mine[1]:
                found.append(Divergence(seq, "missing", f"the replay records seq {seq} "
                                        f"({mine[0].get('type')}) but the store lacks it", mine[2]))
        elif whole_task and theirs is not None:
            if lo is not None and hi is not None and lo < seq < hi:
                found.append(Divergence(seq, "uncovered", f"stored seq {seq} "
                                        f"({theirs.get('type')}) is not produced by any run"))
            elif lo is None or seq < lo:
                found.append(Divergence(seq, "uncovered", f"no engine history covers stored seq "
                                        f"{seq} ({theirs.get('type')})"))
            else:
                found.append(Divergence(seq, "extra", f"stored seq {seq} ({theirs.get('type')}) "
                                        f"is beyond what the replay produces (last seq {hi})"))
        if len(found) > 4 * MAX_DIVERGENCES:
            break
    found.sort(key=lambda d: (d.seq if d.seq is not None else 1 << 62, d.kind))
    return _dedupe(found)[:MAX_DIVERGENCES]


def _order(d: Divergence) -> tuple[int, int, str]:
    """Causes first (in CAUSE_KINDS order), then by seq."""
    rank = CAUSE_KINDS.index(d.kind) if d.kind in CAUSE_KINDS else len(CAUSE_KINDS)
    return (rank, d.seq if d.seq is not None else 1 << 62, d.kind)


def _dedupe(found: list[Divergence]) -> list[Divergence]:
    seen: set[tuple[int | None, str, str]] = set()
    out = []
    for d in found:
        key = (d.seq, d.kind, d.reason if d.seq is None else "")
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# --- a task's histories: live from Temporal, else the archive --------------------------------


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, RPCError) and exc.status in (RPCStatusCode.NOT_FOUND,
                                                         RPCStatusCode.INVALID_ARGUMENT)


async def fetch_task_histories(
    task_id: str,
    *,
    client: Client | None,
    store: Any,
    source: Literal["auto", "live", "archive"] = "auto",
    notes: list[str] | None = None,
) -> tuple[list[tuple[WorkflowHistory, Source]], list[Divergence]]:
    """Every run of the task, oldest first: live histories followed back through
    continue-as-new (no visibility needed), an archived one where Temporal no longer has it
    (or always, with source="archive"). Archives whose digest no longer matches are refused."""
    notes = notes if notes is not None else []
    problems: list[Divergence] = []
    archives = {a.run_id: a for a in store.list_archives(task_id)} if store is not None else {}
    wid = task_id  # a KeyTask's workflow id is its task id

    def from_archive(run_id: str) -> WorkflowHistory | None:
        record = archives.get(run_id)
        if record is None:
            return None
        if not record.intact:
            problems.append(Divergence(None, "archive", f"archived history of run {run_id} does "
                                       "not match its sha256: it was altered", run_id))
            return None
        return history_from_json(record.history, record.workflow_id)

    runs: list[tuple[WorkflowHistory, Source]] = []
    if source == "archive" or client is None:
        for record in archives.values():
            h = from_archive(record.run_id)
            if h is not None:
                runs.append((h, "archive"))
        runs.sort(key=lambda r: r[0].events[0].event_time.ToNanoseconds())
        return runs, problems

    run_id: str | None = None  # None: the latest run
    seen: set[str] = set()
    while True:
        history: WorkflowHistory | None = None
        src: Source = "live"
        try:
            history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
            if not history.events:
                history = None
        except RPCError as exc:
            if not _not_found(exc):
                raise
        if history is None and run_id is not None and source != "live":
            history, src = from_archive(run_id), "archive"
        if history is None:
            if run_id is None:
                if source == "live":
                    notes.append(f"Temporal has no workflow {wid!r}")
                    return runs, problems
                notes.append(f"Temporal has no workflow {wid!r}: using the archive")
                return await fetch_task_histories(task_id, client=None, store=store,
                                                  source="archive", notes=notes)
            notes.append(f"run {run_id} is neither in Temporal nor archived")
            break
        if history.run_id in seen:
            break
        seen.add(history.run_id)
        runs.append((history, src))
        run_id = _previous_run(history.events)
        if run_id is None:
            break
    runs.reverse()
    return runs, problems


# --- verify ----------------------------------------------------------------------------------


async def verify_task(
    task_id: str,
    *,
    store: Any,
    client: Client | None,
    source: Literal["auto", "live", "archive"] = "auto",
    expected_head: tuple[int, str] | None = None,
    chain: ChainVerdict | None = None,
    replayer: Replayer | None = None,
    attempts: int = 3,
    replay: bool = True,
    known_in: Sequence[str] | None = None,
) -> TaskVerdict:
    """Chain + replay verdict for one task, plus the store-wide checks (see the module's
    docstring). The histories are fetched before the store is read, so every batch the history
    shows recorded is already in the store; a running task's store may then be ahead of its
    history, and the history is fetched again (up to `attempts`).

    `known_in`: where the task exists besides its events (`chain_check.task_sources`); looked
    up in the store when not given. A checkpointed head counts as one more such place."""
    if chain is None:
        chain = verify_task_chain(store, task_id, expected_head=expected_head)
    if known_in is None:
        known_in = task_sources(store, task_id).get(task_id, [])
    sources = list(known_in) + (["the checkpoint"] if expected_head is not None else [])
    archives = store.list_archives(task_id)
    verdict = TaskVerdict(task_id, chain, [], 0, [])
    if not replay:
        stored_rows = store.load(task_id)
        verdict = TaskVerdict(task_id, _filled(chain, stored_rows), [], len(stored_rows), [],
                              ["replay skipped (--chain-only)"], replayed=True, sources=sources)
        _store_checks(verdict, store, stored_rows, archives, [], from_archive=False)
        return verdict
    for attempt in range(attempts):
        notes: list[str] = []
        histories, problems = await fetch_task_histories(task_id, client=client, store=store,
                                                         source=source, notes=notes)
        stored_rows = store.load(task_id)
        stored = [s.event for s in stored_rows]
        chain = _filled(chain, stored_rows)
        runs = await replay_histories(histories, replayer) if histories else []
        divergences = problems + compare_runs(runs, stored, whole_task=True, task_id=task_id)
        divergences.sort(key=_order)
        verdict = TaskVerdict(task_id, chain, runs, len(stored), divergences[:MAX_DIVERGENCES],
                              notes, replayed=bool(runs), sources=sources)
        running = bool(runs) and runs[-1].close is None and runs[-1].source == "live"
        only_tail = bool(divergences) and all(d.kind == "extra" for d in divergences)
        if not (running and only_tail) or attempt == attempts - 1:
            break
        await asyncio.sleep(0.2 * (attempt + 1))  # the store ran ahead of the history: refetch
    _store_checks(verdict, store, stored_rows, archives, divergences,
                  from_archive=source == "archive" or client is None)
    for run in verdict.runs:
        if run.source == "archive" and run.close is None:
            verdict.notes.append(f"archive of run {run.run_id} ends before the run closed "
                                 "(`audit archive` completes it)")
    return verdict


def _store_checks(verdict: TaskVerdict, store: Any, stored_rows: Sequence[Any],
                  archives: Sequence[Any], found: list[Divergence], *,
                  from_archive: bool) -> None:
    """Add to `verdict` what the store says apart from the chain and the replay: a task with no
    events that exists elsewhere, altered or missing archives, a read model that is not the
    fold of the events. `found`: every divergence of the replay (before the cut-off);
    `from_archive`: the histories were to come from the archive (asked for, or no Temporal)."""
    from audit.rebuild import check_read_model

    task_id = verdict.task_id
    causes: list[Divergence] = []
    reported = {d.run_id for d in found if d.kind == "archive"}
    for record in archives:  # whichever source the replay used: an altered archive is a finding
        if not record.intact and record.run_id not in reported:
            causes.append(Divergence(None, "archive", f"archived history of run {record.run_id} "
                                     "does not match its sha256: it was altered", record.run_id))
    if not stored_rows:
        if any(b.recorded for r in verdict.runs if r.source == "live" for b in r.batches):
            verdict.sources.append("Temporal")
        if verdict.sources:
            causes.append(Divergence(1, "no-events", "no events in the store, but the task "
                                     f"exists in {', '.join(verdict.sources)}"))
    elif verdict.chain is not None and verdict.chain.ok:  # a broken chain is never folded
        diffs = check_read_model(store, task_id, stored_rows)
        if diffs:
            shown = "; ".join(diffs[:8]) + (f"; … {len(diffs) - 8} more" if len(diffs) > 8 else "")
            causes.append(Divergence(None, "read-model", "the read model is not the fold of the "
                                     f"events (forged, or written by other projection code; "
                                     f"`store rebuild` rewrites it): {shown}"))
    rest = list(found)
    closed = next((s.seq for s in stored_rows if s.event.get("type") == "TaskClosed"), None)
    if from_archive and stored_rows and not verdict.runs and not archives:
        # Nothing could be replayed because the task has no archive: the seqs the replay
        # leaves uncovered are not findings by themselves; what the missing archive means
        # depends on whether the task closed.
        rest = [d for d in rest if d.kind != "uncovered"]
        head = stored_rows[-1].seq
        if closed is None:
            verdict.no_archive = (f"no archive yet: the task is still running (stored seq 1.."
                                  f"{head}); a run's history is archived when it continues as "
                                  "new or the task closes; verify it against Temporal "
                                  "(--source live or auto)")
        else:
            causes.append(Divergence(None, "archive", f"the task closed (seq {closed}) but has "
                                     "no archive: its engine history was deleted or never "
                                     "archived, and Temporal does not have it"))
    elif (closed is None and verdict.runs and all(r.source == "archive" for r in verdict.runs)
          and archives and all(a.reason == "continued_as_new" for a in archives)):
        # Archived runs all continued as new and the task is still running: the current run's
        # events are not archived yet, so the stored seqs after them are not replayed.
        tail = sorted(d.seq for d in rest if d.kind == "extra" and d.seq is not None)
        if tail:
            rest = [d for d in rest if d.kind != "extra"]
            verdict.notes.append(f"seqs {tail[0]}..{stored_rows[-1].seq} belong to the running "
                                 "run, not archived yet: not replayed")
    if causes or rest != found:
        verdict.divergences = _dedupe(sorted(causes + rest, key=_order))[:MAX_DIVERGENCES]


def _filled(chain: ChainVerdict, rows: Sequence[Any]) -> ChainVerdict:
    """A passing verdict from the bulk screen carries no counts: give it the task's."""
    if chain.ok and chain.checked == 0 and rows:
        return ChainVerdict(ok=True, checked=len(rows), head=(rows[-1].seq, rows[-1].hash))
    return chain


async def verify_tasks(
    task_ids: Sequence[str],
    *,
    store: Any,
    client: Client | None,
    source: Literal["auto", "live", "archive"] = "auto",
    checkpoints: Mapping[str, tuple[int, str]] | None = None,
    chains: Mapping[str, ChainVerdict] | None = None,
    replay: bool = True,
    sandboxed: bool = True,
    sources: Mapping[str, Sequence[str]] | None = None,
    on_verdict: Callable[[list[TaskVerdict]], None] | None = None,
) -> list[TaskVerdict]:
    """`verify_task` for many tasks, sharing one Replayer. `sources`: `chain_check.task_sources`
    of the whole store, when the caller has it (else each task's is looked up). `on_verdict` is
    called with the verdicts so far after each task (e.g. to show progress)."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                     thread_name_prefix="duban-replay")
    try:
        replayer = make_replayer(executor, sandboxed)
        out = []
        for task_id in task_ids:
            cp = (checkpoints or {}).get(task_id)
            chain = (chains or {}).get(task_id)
            known = None if sources is None else sources.get(task_id, [])
            out.append(await verify_task(task_id, store=store, client=client, source=source,
                                         expected_head=cp, chain=chain, replayer=replayer,
                                         replay=replay, known_in=known))
            if on_verdict is not None:
                on_verdict(out)
        return out
    finally:
        executor.shutdown(wait=False)


# --- archive: complete histories of closed runs ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchiveOutcome:
    task_id: str
    run_id: str
    status: str  # archived | superseded | unchanged | conflict | skipped
    events_before: int
    events_after: int
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "run_id": self.run_id, "status": self.status,
                "events_before": self.events_before, "events_after": self.events_after,
                "detail": self.detail}


CLOSED_QUERY = "WorkflowType='KeyTask' AND ExecutionStatus != 'Running'"
ALL_QUERY = "WorkflowType='KeyTask'"


async def task_ids_in_visibility(client: Client, query: str = ALL_QUERY) -> set[str]:
    """The task ids of every KeyTask workflow Temporal's visibility lists (each run of a task
    continued as new is listed: one id each). Raises where the server keeps no visibility."""
    return {wf.id async for wf in client.list_workflows(query)}  # workflow id = task id


async def archive_run(client: Client, store: Any, workflow_id: str, run_id: str,
                      history: WorkflowHistory | None = None) -> ArchiveOutcome:
    """Archive one closed run's full history, superseding a shorter archive of it (the store
    checks that the old one is a prefix of the new one before replacing it)."""
    from infra.db.store import ArchiveConflictError

    if history is None:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    close = _close_of(history.events)
    task_id = task_id_of(history.events) or workflow_id
    if close is None:  # open, or a server that left out the close event: ask the engine
        desc = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
        if desc.status is None or desc.status == WorkflowExecutionStatus.RUNNING:
            return ArchiveOutcome(task_id, run_id, "skipped", 0, 0, "run is still open")
        close = desc.status.name.lower()
    reason = "continued_as_new" if close == "continued_as_new" else "closed"
    text = history.to_json()
    existing = store.load_archive(run_id)
    before = existing.event_count if existing is not None else 0
    try:
        if existing is None:
            store.archive_history(task_id, workflow_id, run_id, reason, text)
            return ArchiveOutcome(task_id, run_id, "archived", 0, len(history.events))
        if existing.event_count >= len(history.events):
            if store.archive_history(task_id, workflow_id, run_id, existing.reason, text):
                return ArchiveOutcome(task_id, run_id, "archived", before, len(history.events))
            return ArchiveOutcome(task_id, run_id, "unchanged", before, before)
        store.supersede_archive(run_id, text)
        return ArchiveOutcome(task_id, run_id, "superseded", before, len(history.events))
    except ArchiveConflictError as exc:
        return ArchiveOutcome(task_id, run_id, "conflict", before, len(history.events), str(exc))


async def archive_closed_runs(
    client: Client,
    store: Any,
    *,
    task_ids: Sequence[str] | None = None,
    query: str = CLOSED_QUERY,
) -> list[ArchiveOutcome]:
    """Complete the archive: every closed KeyTask run (by visibility, `query`) or, for the given
    tasks, every closed run of their continue-as-new chains (no visibility needed)."""
    outcomes: list[ArchiveOutcome] = []
    if task_ids is None:
        async for wf in client.list_workflows(query):
            outcomes.append(await archive_run(client, store, wf.id, wf.run_id))
        return outcomes
    for task_id in task_ids:
        histories, _ = await fetch_task_histories(task_id, client=client, store=None,
                                                  source="live")
        if not histories:
            outcomes.append(ArchiveOutcome(task_id, "", "skipped", 0, 0,
                                           "Temporal has no run of this task"))
        for history, _src in histories:
            outcomes.append(await archive_run(client, store, task_id,
                                              history.run_id, history))
    return outcomes
