"""Replays that survive upgrades: the working-day calendar is a recorded input, the 回头看 draw
is derived from the record, events carry a schema version read through upcasters, and store
refusals that can never succeed are final and visible."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import hashlib
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.record import STORE_CONFLICT, STORE_GAP, DubanActivities
from audit.chain_check import verify_task_chain
from audit.recording import recording_gap
from audit.replay import RunReplay, compare_runs, history_from_json, replay_histories
from domain import commands as c
from domain import events as ev
from domain.calendar import COMPAT_CALENDAR, Calendar, calendar_from_days
from domain.decide import assign, decide, recheck_draw, tick
from domain.evolve import evolve, fold
from domain.plan import NodeSpec, Plan, RecheckPolicy, TaskDef, TaskSpec, resolve_plan
from domain.projection import RecordBatch, project
from domain.rules import active_targets, due_rungs
from domain.schema import added
from infra import calendar_source
from infra.db.store import EventStore
from tests.conftest import WORKFLOW_QUEUE
from tests.domain_strategies import Sim, build_spec, local
from tests.scenario import ROSTER, UNITS, ladders, make_spec
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = sorted((Path(__file__).parent / "histories").glob("v*/*.json"))
T0 = local(2026, 3, 2, 9)  # a Monday
DAY = dt.timedelta(days=1)


def with_days_off(cal: Calendar, *extra: dt.date, source: str = "test") -> Calendar:
    return calendar_from_days(source=source, first_year=cal.first_year, last_year=cal.last_year,
                              published=cal.published, days_off=(*cal.days_off, *extra),
                              working_weekends=cal.working_weekends)


async def replay_all() -> list[RunReplay]:
    items = [(history_from_json(p.read_text(encoding="utf-8")), "file") for p in HISTORIES]
    return await replay_histories(items)  # type: ignore[arg-type]


def assert_replays_unchanged(runs: list[RunReplay]) -> None:
    assert len(runs) == len(HISTORIES) >= 16
    for path, run in zip(HISTORIES, runs, strict=True):
        assert run.failure is None, (path.name, run.failure)
        assert run.batches and all(b.sent is not None for b in run.batches), path.name
        assert compare_runs([run], None, whole_task=False) == [], path


@pytest.fixture(scope="module")
async def recorded() -> list[RunReplay]:
    """Every recorded history (v1/v2: specs without a calendar; v3: with one) replayed once with
    the current code (their record_batch inputs are the events as recorded)."""
    return await replay_all()


# --- 1. the calendar is a recorded input ---------------------------------------------------------


def test_domain_never_imports_the_holidays_package() -> None:
    for path in (ROOT / "domain").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "holidays" for n in names), path


def test_the_frozen_compat_calendar_is_the_table_old_tasks_used() -> None:
    # Pinned: regenerating the snapshot from another `holidays` release would change it.
    assert COMPAT_CALENDAR.fingerprint == (
        "35ea9610a0775bb0a9943e55c73169bb82cf34860d434ed20bd7d42d080e7ba9")
    assert (COMPAT_CALENDAR.first_year, COMPAT_CALENDAR.last_year) == (2000, 2040)
    assert COMPAT_CALENDAR.is_published(2026) and not COMPAT_CALENDAR.is_published(2027)
    assert COMPAT_CALENDAR.is_working_day(dt.date(2026, 9, 20))  # 调休 Sunday
    assert not COMPAT_CALENDAR.is_working_day(dt.date(2026, 10, 7))  # 国庆


def test_an_altered_calendar_is_refused() -> None:
    cal = calendar_source.china_calendar(2026, 2027)
    data = cal.model_dump(mode="json")
    data["days_off"] = [d for d in data["days_off"] if d != "2026-10-07"]
    with pytest.raises(ValidationError, match="fingerprint"):
        Calendar.model_validate(data)
    assert Calendar.model_validate(cal.model_dump(mode="json")) == cal


def plan_for(start: dt.datetime, due: dt.date) -> Plan:
    return Plan(code="cal", title="日历", start=start.date(), start_at=start, units=UNITS,
                roster=ROSTER, tasks=(TaskDef(
                    code="T1", title="两委增补", lead_unit="office", responsible=("v01",),
                    nodes=(NodeSpec(code="N1", title="节点1", due=due),
                           NodeSpec(code="N2", title="节点2", working_days=3, after="N1",
                                    planned_progress=100))),))


def test_plan_resolve_records_the_calendar_of_the_years_the_task_spans() -> None:
    plan = plan_for(T0, dt.date(2026, 12, 30))
    live = calendar_source.calendar_for_plan(plan)
    (spec,) = resolve_plan(plan, ladders(), live)
    assert spec.calendar is not None
    assert (spec.calendar.first_year, spec.calendar.last_year) == (2026, 2027 + 2)
    assert spec.calendar.source.startswith("holidays ")
    # N2 = 3 working days after 12-30 (2027 estimated: its notice is not published yet)
    assert spec.nodes[1].calendar_estimated == (2027,)
    # and the spec's JSON round-trips with its calendar (what TaskAssigned records)
    assert TaskSpec.model_validate_json(spec.model_dump_json()) == spec


def test_rung_time_follows_the_spec_calendar_not_the_live_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = build_spec(T0, due_days=(10,))  # N1 due Thursday 2026-03-12 09:00
    recorded = COMPAT_CALENDAR.restricted(2026, 2028)
    with_monday_off = with_days_off(recorded, dt.date(2026, 3, 16))
    # The live table (the adapter) now says otherwise: a running task must not notice.
    monkeypatch.setattr(calendar_source, "china_calendar",
                        lambda first, last: with_monday_off.restricted(first, last))

    def order_time(cal: Calendar) -> dt.datetime:
        spec = base.model_copy(update={"calendar": cal})
        (target,) = active_targets(evolve(None, assign(spec, T0)))
        step = next(s for s in target.steps if s.code == "order")  # 3 working days after due
        return target.rung_time(step)[0]

    assert order_time(recorded) == local(2026, 3, 17, 9)  # Fri 13, Mon 16, Tue 17
    assert order_time(with_monday_off) == local(2026, 3, 18, 9)
    # and tick fires it at the spec's time
    spec = base.model_copy(update={"calendar": recorded})
    state = evolve(None, assign(spec, T0))
    fired = [r.step.code for r in due_rungs(state, local(2026, 3, 17, 9))]
    assert fired == ["remind", "order"]


def test_a_published_year_reaches_a_running_task_only_by_a_recorded_event() -> None:
    recorded = COMPAT_CALENDAR.restricted(2026, 2028)
    spec = build_spec(local(2026, 12, 1, 9), due_days=(30,)).model_copy(
        update={"calendar": recorded})  # N1 due 2026-12-31 09:00
    sim = Sim(spec, local(2026, 12, 1, 9))
    rung_order = next(s for s in active_targets(sim.state)[0].steps if s.code == "order")
    before = active_targets(sim.state)[0].rung_time(rung_order)
    assert before == (local(2027, 1, 6, 9), (2027,))  # 2027 estimated: Jan 1 off only
    notice_2027 = calendar_from_days(
        source="国务院办公厅 2027 notice", first_year=2026, last_year=2028,
        published=(*recorded.published, 2027),
        days_off=(*recorded.days_off, dt.date(2027, 1, 4)),
        working_weekends=recorded.working_weekends)
    refused = decide(sim.state, c.UpdateCalendar(actor="unit.head", calendar=notice_2027), sim.now)
    assert isinstance(refused, c.Rejection) and refused.code == "unauthorised"
    narrower = notice_2027.restricted(2027, 2028)
    refused = decide(sim.state, c.UpdateCalendar(actor="office.staff", calendar=narrower), sim.now)
    assert isinstance(refused, c.Rejection) and refused.code == "not_allowed"
    (updated,) = sim.ok(c.UpdateCalendar(actor="office.staff", calendar=notice_2027,
                                         note="2027年放假安排"), sim.now + DAY)
    assert isinstance(updated, ev.CalendarUpdated)
    assert updated.actor == "office.staff" and updated.newly_published == (2027,)
    assert updated.changed_years == (2027,) and updated.previous_fingerprint == recorded.fingerprint
    assert active_targets(sim.state)[0].rung_time(rung_order) == (local(2027, 1, 7, 9), ())
    # the update is in the record: a fold of the stored events gives the same calendar
    again = fold(ev.parse_event(ev.event_json(e)) for e in sim.events)
    assert again.spec.calendar == notice_2027 and again == sim.state
    # the same calendar twice is a duplicate, and changes nothing
    dup = decide(sim.state, c.UpdateCalendar(actor="office.staff", calendar=notice_2027), sim.now)
    assert isinstance(dup, c.Rejection) and dup.code == "duplicate"


async def test_recorded_histories_replay_unchanged_under_a_different_calendar_table(
        monkeypatch: pytest.MonkeyPatch, recorded: list[RunReplay]) -> None:
    """The live table replaced by one with every Monday off: every history still replays to
    exactly the events it recorded, v1/v2 (specs without a calendar: the frozen table of their
    time) and v3 (the calendar recorded in the spec) alike."""
    real = calendar_source.china_calendar

    def mondays_off(first: int, last: int) -> Calendar:
        cal = real(first, last)
        day, mondays = dt.date(first, 1, 1), []
        while day.year <= last:
            if day.weekday() == 0:
                mondays.append(day)
            day += DAY
        return with_days_off(cal, *mondays, source="patched")

    monkeypatch.setattr(calendar_source, "china_calendar", mondays_off)
    specs = [ev.parse_event(r.batches[0].sent[0]) for r in recorded  # type: ignore[index]
             if r.batches[0].sent and r.batches[0].sent[0]["seq"] == 1]
    assert specs and all(isinstance(s, ev.TaskAssigned) for s in specs)
    assert {s.spec.calendar is None for s in specs} == {True, False}  # both kinds replayed
    # The replaced table matters for these histories: counted on it, a recorded rung moves.
    fired = [e for r in recorded for b in r.batches for e in (b.sent or [])
             if e["type"] == "EscalationFired"]
    live = calendar_source.china_calendar(2026, 2028)

    def rung_at(e: dict[str, Any], cal: Calendar) -> dt.datetime:
        step = next(s for s in ladders()[e["ladder"]].steps if s.code == e["step"])
        return step.after.after(dt.datetime.fromisoformat(e["due_since"]), "Asia/Shanghai",
                                cal)[0]

    recorded_at = [dt.datetime.fromisoformat(e["required_at"]) for e in fired]
    kept = [e for e, at in zip(fired, recorded_at, strict=True) if rung_at(e, COMPAT_CALENDAR) == at]
    moved = [e for e, at in zip(fired, recorded_at, strict=True) if rung_at(e, live) != at]
    assert len(kept) > 20 and set(map(id, moved)) & set(map(id, kept)), \
        "the patched table should move recorded rungs"
    assert_replays_unchanged(await replay_all())


# --- 2. the 回头看 draw ---------------------------------------------------------------------------


def complete(spec: TaskSpec, idle_ticks: int) -> list[ev.Event]:
    sim = Sim(spec, T0)
    for k in range(idle_ticks):  # the workflow woke k times for nothing
        assert sim.emit(tick(sim.state, T0 + k * dt.timedelta(minutes=7))) == []
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), T0 + 2 * DAY)
    sim.ok(c.AcceptNode(actor="supervisor", node="N1"))
    decided = sim.emit(tick(sim.state, T0 + 2 * DAY))
    assert [type(e).__name__ for e in decided][0] == "TaskCompleted"
    return sim.events


def auditor_draw(events: list[dict[str, Any]]) -> tuple[int, str]:
    """What an auditor recomputes from the stored record alone."""
    spec = TaskSpec.model_validate(events[0]["spec"])
    done = next(e for e in events if e["type"] == "TaskCompleted")
    seed = spec.recheck.seed if spec.recheck.seed is not None else spec.plan_code
    basis = "\x1f".join(("duban/recheck-draw/v1", done["task_id"], str(done["seq"]),
                         dt.datetime.fromisoformat(done["at"]).astimezone(dt.UTC).isoformat(),
                         seed))
    return int(hashlib.sha256(basis.encode()).hexdigest(), 16) % 100, basis


@pytest.mark.parametrize("percent", [0, 50, 100])
def test_the_recheck_draw_does_not_depend_on_how_often_the_workflow_woke(percent: int) -> None:
    spec = build_spec(T0, due_days=(10,), recheck_percent=percent)
    runs = [complete(spec, n) for n in (0, 1, 9)]
    decisions = [next(e for e in r if isinstance(e, ev.RecheckScheduled | ev.TaskClosed))
                 for r in runs]
    assert len({(d.draw, d.draw_basis) for d in decisions}) == 1  # type: ignore[union-attr]
    stored = [ev.event_json(e) for e in runs[0]]
    decided = next(e for e in stored if e["type"] in ("RecheckScheduled", "TaskClosed"))
    draw, basis = auditor_draw(stored)
    assert (decided["draw"], decided["draw_basis"]) == (draw, basis)
    assert decided["type"] == ("RecheckScheduled" if draw < percent else "TaskClosed")


def test_the_draw_is_spread_and_a_seed_changes_it() -> None:
    spec = build_spec(T0, due_days=(10,), recheck_percent=50)
    completed = ev.TaskCompleted(task_id=spec.task_id, seq=7, at=T0, actor=ev.SYSTEM, on_time=True)
    draws = {recheck_draw(spec.model_copy(update={"task_id": f"p/t/{i}"}),
                          completed.model_copy(update={"task_id": f"p/t/{i}"}))[0]
             for i in range(300)}
    assert len(draws) > 80 and min(draws) < 5 and max(draws) > 94
    seeded = spec.model_copy(update={"recheck": RecheckPolicy(percent=50, seed="2026-秘")})
    assert recheck_draw(seeded, completed)[1].endswith("2026-秘")
    assert recheck_draw(seeded, completed) != recheck_draw(spec, completed)


def test_old_draws_given_by_the_workflow_are_recorded_as_before() -> None:
    """Histories from before the derived draw pass the workflow's random number: the events
    are exactly the earlier ones (no basis, no draw on TaskClosed)."""
    spec = build_spec(T0, due_days=(10,), recheck_percent=50)
    sim = Sim(spec, T0)
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), T0 + DAY)
    sim.ok(c.AcceptNode(actor="supervisor", node="N1"))
    closed = tick(sim.state, sim.now, draw=77)[-1]
    assert ev.event_json(closed) == {
        "task_id": spec.task_id, "seq": closed.seq, "at": closed.at.isoformat().replace(
            "+00:00", "Z"), "actor": "system", "v": 1, "type": "TaskClosed",
        "reason": "completed; not drawn for 回头看 (draw 77 ≥ 50%)"}


# --- 3. event schema evolution ----------------------------------------------------------------


def test_old_events_read_and_serialise_to_exactly_their_recorded_form(
        recorded: list[RunReplay]) -> None:
    """Fields added since (the spec's calendar, the recheck seed, draw bases) change nothing in
    the old records."""
    old = [e for r in recorded for b in r.batches for e in (b.sent or [])]
    assert len(old) > 200
    for e in old:
        assert ev.event_json(ev.parse_event(e)) == e


class AcknowledgedV2(ev.Acknowledged):
    """A new version of 签收 that records the channel it came by (unknown for old events)."""

    v: int = 2
    channel: str | None = added()


def acknowledged_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    calls.append(data["seq"])
    return {**data, "channel": None}  # not recorded before v2


calls: list[int] = []


@pytest.fixture
def acknowledged_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    calls.clear()
    monkeypatch.setattr(ev, "Acknowledged", AcknowledgedV2)  # what decide now writes
    monkeypatch.setitem(ev.EVENT_TYPES, "Acknowledged", AcknowledgedV2)
    monkeypatch.setitem(ev.UPCASTERS, ("Acknowledged", 1), acknowledged_v1_to_v2)


async def test_a_new_event_version_replays_and_folds_old_histories(
        acknowledged_v2: None, recorded: list[RunReplay]) -> None:
    for run in recorded:
        sent = [e for b in run.batches for e in (b.sent or [])]
        parsed = [ev.parse_event(e) for e in sent]
        acks = [p for p in parsed if type(p).model_fields["type"].default == "Acknowledged"]
        assert all(isinstance(a, AcknowledgedV2) and a.v == 2 for a in acks)
        if sent and sent[0]["seq"] == 1:
            assert fold(parsed).last_seq == sent[-1]["seq"]
    assert calls, "old Acknowledged events were upcast"
    runs = await replay_all()  # the workflow now writes v2 events: the comparison upcasts
    assert_replays_unchanged(runs)
    written = [e for r in runs for e in r.events if e["type"] == "Acknowledged"]
    assert written and all(e["v"] == 2 and "channel" not in e for e in written)


def test_a_store_of_old_events_verifies_and_folds_under_the_new_version(
        acknowledged_v2: None, recorded: list[RunReplay], store: EventStore) -> None:
    run = next(r for r in recorded if r.batches[0].sent and r.batches[0].sent[0]["seq"] == 1
               and any(e["type"] == "Acknowledged" for b in r.batches for e in b.sent or []))
    old = [e for b in run.batches for e in (b.sent or [])]
    task_id = old[0]["task_id"]
    store.append(task_id, old)
    verdict = verify_task_chain(store, task_id)  # hashes the stored bytes, as stored
    assert verdict.ok and verdict.checked == len(old), verdict
    rows = store.load(task_id)
    assert {r.event["v"] for r in rows if r.type == "Acknowledged"} == {1}
    state = fold(ev.parse_event(r.event) for r in rows)
    assert state.last_seq == len(old) and state.acknowledged_at is not None


def test_a_removed_field_is_read_through_its_upcaster(monkeypatch: pytest.MonkeyPatch) -> None:
    class TaskClosedV2(ev.Event):  # `reason` renamed `why`: a breaking change
        type: Any = "TaskClosed"
        v: int = 2
        why: str

    old = ev.event_json(ev.TaskClosed(task_id="t", seq=3, at=T0, actor="system", reason="完成"))
    monkeypatch.setitem(ev.EVENT_TYPES, "TaskClosed", TaskClosedV2)
    with pytest.raises(ValueError, match="no upcaster for TaskClosed v1"):
        ev.parse_event(old)
    monkeypatch.setitem(ev.UPCASTERS, ("TaskClosed", 1),
                        lambda d: {k: v for k, v in d.items() if k != "reason"} | {"why": d["reason"]})
    read = ev.parse_event(old)
    assert isinstance(read, TaskClosedV2) and read.why == "完成" and read.v == 2
    assert old["v"] == 1 and old["reason"] == "完成"  # the stored payload is left as it was
    with pytest.raises(ValueError, match="newer version"):
        ev.parse_event({**old, "v": 3})


# --- 4. store refusals are final and visible ---------------------------------------------------


def first_batch(spec: TaskSpec) -> RecordBatch:
    first = assign(spec, T0)
    return RecordBatch(task_id=spec.task_id, events=[ev.event_json(first)],
                       read_model=project(evolve(None, first)))


def refusals(kind: str) -> float:
    return REGISTRY.get_sample_value("duban_store_refusals_total", {"kind": kind}) or 0.0


def test_a_conflicting_or_gapped_batch_is_refused_for_good(store: EventStore) -> None:
    spec = make_spec(T0, plan_code=f"p{uuid.uuid4().hex[:6]}")
    acts = DubanActivities(store)
    env = ActivityEnvironment()
    batch = first_batch(spec)
    env.run(acts.record_batch, batch)
    forged = batch.model_copy(update={"events": [{**batch.events[0], "actor": "someone"}]})
    before = refusals(STORE_CONFLICT)
    with pytest.raises(ApplicationError) as err:
        env.run(acts.record_batch, forged)
    assert err.value.type == STORE_CONFLICT and err.value.non_retryable
    assert "seq 1..1" in str(err.value)
    assert refusals(STORE_CONFLICT) == before + 1
    gap = {**batch.events[0], "seq": 5}
    before = refusals(STORE_GAP)
    with pytest.raises(ApplicationError) as err:
        env.run(acts.record_batch, batch.model_copy(update={"events": [gap]}))
    assert err.value.type == STORE_GAP and err.value.non_retryable
    assert refusals(STORE_GAP) == before + 1
    assert [r.seq for r in store.load(spec.task_id)] == [1]  # nothing written


class _History:
    def to_json(self) -> str:
        return '{"events": []}'


class _Handle:
    async def fetch_history(self) -> _History:
        return _History()


class _Client:
    def get_workflow_handle(self, workflow_id: str, run_id: str | None = None) -> _Handle:
        return _Handle()


class _ThreadRecordingStore:
    def __init__(self, conflict: bool) -> None:
        self.conflict, self.threads = conflict, []  # type: ignore[var-annotated]

    def archive_history(self, *args: Any) -> bool:
        from infra.db.store import ArchiveConflictError

        self.threads.append(threading.get_ident())
        if self.conflict:
            raise ArchiveConflictError("run-1")
        return True

    def supersede_archive(self, run_id: str, text: str) -> bool:
        self.threads.append(threading.get_ident())
        return True


@pytest.mark.parametrize("conflict", [False, True])
async def test_archive_history_runs_the_store_off_the_event_loop(conflict: bool) -> None:
    store = _ThreadRecordingStore(conflict)
    acts = DubanActivities(store, client=_Client(), channels=[])  # type: ignore[arg-type]
    loop_thread = threading.get_ident()
    assert await ActivityEnvironment().run(acts.archive_history, "t", "t", "run-1", "closed")
    assert len(store.threads) == (2 if conflict else 1)
    assert loop_thread not in store.threads


async def test_audit_names_a_task_whose_workflow_decided_what_the_store_refused(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore) -> None:
    now = await ts_env.get_current_time()
    spec = make_spec(now, plan_code=f"p{uuid.uuid4().hex[:8]}")
    # Someone wrote another seq 1 for this task first: the workflow's TaskAssigned conflicts.
    forged = assign(spec.model_copy(update={"title": "别的任务"}), now)
    wf_store.append(spec.task_id, [ev.event_json(forged)])
    handle = await ts_env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id, task_queue=WORKFLOW_QUEUE,
        search_attributes=initial_search_attributes(spec))
    with pytest.raises(WorkflowFailureError) as err:
        await asyncio.wait_for(handle.result(), timeout=60)
    cause = err.value.cause
    while cause.__cause__ is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__  # type: ignore[assignment]
    assert isinstance(cause, ApplicationError) and cause.type == STORE_CONFLICT
    gap = await recording_gap(ts_env.client, wf_store, spec.task_id)
    assert gap is not None and gap.stored_seq == 1 and gap.status == "failed"
    assert STORE_CONFLICT in gap.cause and spec.task_id in gap.line
    if gap.decided_seq is not None:  # the state query answered (a worker replayed the run)
        assert gap.recorded_seq == 0 and gap.decided_seq >= 1
    # a healthy task is not named
    ok_spec = make_spec(now, plan_code=f"p{uuid.uuid4().hex[:8]}")
    ok = await ts_env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=ok_spec), id=ok_spec.task_id, task_queue=WORKFLOW_QUEUE,
        search_attributes=initial_search_attributes(ok_spec))
    for _ in range(200):
        state = await ok.query("state")
        if state["recorded_seq"] == state["last_seq"]:
            break
        await asyncio.sleep(0.02)
    assert await recording_gap(ts_env.client, wf_store, ok_spec.task_id) is None
    await ok.terminate("test over")
