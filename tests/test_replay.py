"""Replay: recorded histories of every workflow type replay with the current code (CI fails on a
non-deterministic change), and a task's engine history replays to exactly its stored events.

Re-record the histories with `tests/histories/record_histories.py` (see its docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from audit.replay import (
    Batch,
    RunReplay,
    compare_runs,
    history_from_json,
    replay_histories,
    verify_tasks,
)
from domain.commands import COMMANDS
from domain.events import AnyEvent
from infra.db.store import EventStore
from tests.conftest import WORKFLOW_QUEUE
from tests.histories.record_histories import SCENARIOS, drive
from tests.scenario import ladders

HISTORY_DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(HISTORY_DIR.glob("v*/*.json"))  # every released workflow version


def key(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


@pytest.fixture(scope="module")
async def replayed() -> dict[str, RunReplay]:
    """Every recorded history replayed once with the current KeyTask (one Replayer)."""
    items = [(history_from_json(p.read_text(encoding="utf-8")), "file") for p in HISTORIES]
    runs = await replay_histories(items)  # type: ignore[arg-type]
    return {key(p): run for p, run in zip(HISTORIES, runs, strict=True)}


# Scenarios recorded from a version on (what the workflow could not do before it).
SINCE = {"signed": "v4"}
CONTINUED = ("continued", "signed")  # continued as new: one file per run


def test_there_are_recorded_histories() -> None:
    for version in sorted({p.parent.name for p in HISTORIES}):
        names = {p.stem for p in HISTORIES if p.parent.name == version}
        wanted = {s for s in SCENARIOS if int(SINCE.get(s, "v1")[1:]) <= int(version[1:])}
        assert {f"keytask-{s}" for s in wanted if s not in CONTINUED} <= names, version
        for s in wanted & set(CONTINUED):
            assert any(n.startswith(f"keytask-{s}-run") for n in names), (version, s)


def test_the_signed_history_proves_its_actors_on_replay(
        replayed: dict[str, RunReplay]) -> None:
    """Replayed with the current code, the signed scenario gives what it recorded: every
    accepted command proven by the web key, five refusals for want of a good proof."""
    runs = [run for name, run in sorted(replayed.items())
            if name.startswith(f"v{max(int(p.parent.name[1:]) for p in HISTORIES)}/keytask-signed")]
    assert len(runs) >= 2, "the signed scenario continues as new"
    events = [e for run in runs for b in run.batches for e in b.events]
    refused = [e for e in events if e["type"] == "CommandRejected"]
    assert [e["code"] for e in refused] == ["unauthenticated"] * 5
    by_people = [e for e in events if e["actor"] in ("unit.member", "supervisor")
                 and e["type"] != "CommandRejected"]
    assert {e["type"] for e in by_people} >= {"Acknowledged", "ProgressReported", "NodeClaimed",
                                              "NodeAccepted"}
    assert all(e["proof"]["method"] == "signed" and e["proof"]["sender"] == "web"
               for e in by_people), by_people


@pytest.mark.parametrize("name", [key(p) for p in HISTORIES])
def test_recorded_history_replays_with_current_code(replayed: dict[str, RunReplay],
                                                    name: str) -> None:
    run = replayed[name]
    assert run.failure is None, f"{name}: the workflow code no longer replays: {run.failure}"
    assert run.close in ("completed", "continued_as_new")
    assert run.batches and all(b.recorded and b.sent is not None for b in run.batches)
    # The events the replay hands to record_batch are the ones the history recorded.
    assert compare_runs([run], None, whole_task=False) == []


def test_recorded_histories_cover_every_event_command_and_ladder_step(
        replayed: dict[str, RunReplay]) -> None:
    events = [e for run in replayed.values() for e in run.events]
    event_types = {t.model_fields["type"].default for t in AnyEvent.__origin__.__args__}  # type: ignore[attr-defined]
    assert {e["type"] for e in events} == event_types
    fired = {(e["ladder"], e["step"]) for e in events if e["type"] == "EscalationFired"}
    production = {code: lad for code, lad in ladders().items() if code != "demo-minutes"}
    assert fired == {(code, s.code) for code, lad in production.items() for s in lad.steps}
    # every command, accepted (its own event) or refused (CommandRejected names it)
    by_command = {
        "acknowledge": "Acknowledged", "progress": "ProgressReported", "claim": "NodeClaimed",
        "accept": "NodeAccepted", "reject_claim": "ClaimRejected",
        "request_extension": "ExtensionRequested", "decide_extension": "ExtensionDecided",
        "inspect": "InspectionRecorded", "report_rectification": "RectificationReported",
        "verify_rectification": "RectificationVerified", "recheck": "RecheckRecorded",
        "update_calendar": "CalendarUpdated", "sign_notice": "NoticeSignedFor",
    }
    assert set(by_command) == set(COMMANDS)
    assert {t for t in by_command.values()} <= {e["type"] for e in events}
    refusals = {e["code"] for e in events if e["type"] == "CommandRejected"}
    assert {"malformed", "unknown_command", "unauthorised", "not_allowed", "too_late",
            "duplicate"} <= refusals
    decided = [e for e in events if e["type"] == "ExtensionDecided"]
    assert {d["approved"] for d in decided} == {True, False}
    rechecks = [e for e in events if e["type"] == "RecheckRecorded"]
    assert {r["passed"] for r in rechecks} == {True, False}


async def test_changed_commands_fail_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change that alters the commands a workflow emits (here: no more timers) is caught by
    the Replayer itself: this is what fails CI on an unguarded workflow change."""
    import domain.rules

    monkeypatch.setattr(domain.rules, "next_wakeup", lambda state, now, **_: None)
    history = history_from_json((HISTORY_DIR / "v2" / "keytask-escalation.json").read_text("utf-8"))
    run = (await replay_histories([(history, "file")]))[0]
    assert run.failure is not None and "Nondeterminism" in run.failure
    found = compare_runs([run], None, whole_task=False)
    assert found and found[0].kind == "replay"


async def test_changed_events_are_divergent_at_the_first_changed_seq(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A change that keeps the commands but alters an event's content replays "fine" for
    Temporal; the comparison with what the history sent to record_batch catches it."""
    import domain.decide

    original = domain.decide.reject

    def reject(*args: Any, **kwargs: Any) -> Any:
        event = original(*args, **kwargs)
        return event.model_copy(update={"reason": event.reason + " (reworded)"})

    monkeypatch.setattr(domain.decide, "reject", reject)
    text = (HISTORY_DIR / "v2" / "keytask-lifecycle.json").read_text("utf-8")
    run = (await replay_histories([(history_from_json(text), "file")]))[0]
    assert run.failure is None
    first_rejected = next(e["seq"] for e in run.events if e["type"] == "CommandRejected")
    found = compare_runs([run], None, whole_task=False)
    assert found[0].seq == first_rejected and found[0].kind == "history"
    assert "reason" in found[0].reason


def test_compare_names_missing_extra_and_unrecorded_seqs() -> None:
    def ev(seq: int, **kw: Any) -> dict[str, Any]:
        return {"task_id": "t", "seq": seq, "type": "X", "at": "2026-01-01T00:00:00Z",
                "actor": "a", "v": 1, **kw}

    run = RunReplay(workflow_id="t", run_id="r1", task_id="t", source="file",
                    history_events=9, close="completed", previous_run_id=None, started_at=0.0,
                    batches=[Batch([ev(1), ev(2)], True, None), Batch([ev(3)], False, None)])
    assert compare_runs([run], [ev(1), ev(2)], whole_task=True) == []  # seq 3 still pending
    assert compare_runs([run], [ev(1)], whole_task=True)[0].seq == 2  # recorded, not stored
    extra = compare_runs([run], [ev(1), ev(2), ev(3), ev(4)], whole_task=True)
    assert [(d.seq, d.kind) for d in extra] == [(4, "extra")]
    edited = compare_runs([run], [ev(1), ev(2, note="x")], whole_task=True)
    assert [(d.seq, d.kind) for d in edited] == [(2, "store")] and "note" in edited[0].reason
    run.unrecorded = [(4, 5, "the result this run returned")]
    lost = compare_runs([run], [ev(1), ev(2)], whole_task=True)
    assert [(d.seq, d.kind) for d in lost] == [(4, "unrecorded")]


async def test_replay_agreement_with_the_store(ts_env: WorkflowEnvironment, worker: None,
                                               wf_store: EventStore) -> None:
    """Tasks driven through every command and every ladder step (the recording scenarios, on
    the session worker): their engine histories replay to exactly the stored events, live and
    from the archive; `audit archive` then completes the archives of the closed runs."""
    from audit.replay import archive_closed_runs

    task_ids = [await drive(ts_env, name, WORKFLOW_QUEUE) for name in SCENARIOS]
    live = await verify_tasks(task_ids, store=wf_store, client=ts_env.client, source="live")
    for v in live:
        assert v.ok, (v.task_id, v.reason)
        assert v.stored_events == sum(len(r.events) for r in v.runs) > 0
        # (The time-skipping server sometimes leaves out the close events of a run that
        # continued as new: see record_histories.complete. The last run is always whole.)
        assert v.runs[-1].close == "completed"
    assert max(len(v.runs) for v in live) == 3  # the continued-as-new task
    # Archives written by the workflow itself lack the run's last few events; still agree.
    archived = await verify_tasks(task_ids, store=wf_store, client=None, source="archive")
    assert all(v.ok for v in archived), [(v.task_id, v.reason) for v in archived if not v.ok]
    assert all(r.close is None for v in archived for r in v.runs)
    outcomes = await archive_closed_runs(ts_env.client, wf_store, task_ids=task_ids)
    assert {o.status for o in outcomes} == {"superseded"}
    assert all(o.events_after > o.events_before for o in outcomes)
    again = await archive_closed_runs(ts_env.client, wf_store, task_ids=task_ids[:1])
    assert {o.status for o in again} == {"unchanged"}
    complete = await verify_tasks(task_ids, store=wf_store, client=None, source="archive")
    assert all(v.ok for v in complete)
    assert all(v.runs[-1].close == "completed" for v in complete)


def test_an_archive_is_superseded_only_by_a_longer_history_it_is_a_prefix_of(
        store: EventStore) -> None:
    import json

    from sqlalchemy import text

    from infra.db.store import ArchiveConflictError

    def history(*ids: int) -> str:
        return json.dumps({"events": [{"eventId": str(i), "eventType": f"T{i}"} for i in ids]},
                          indent=2)

    assert store.archive_history("t", "t", "run-1", "closed", history(1, 2))
    with pytest.raises(ArchiveConflictError):  # not an extension of what is archived
        store.supersede_archive("run-1", json.dumps({"events": [{"eventId": "9"}] * 3}))
    with pytest.raises(ArchiveConflictError):  # shorter
        store.supersede_archive("run-1", history(1))
    with pytest.raises(ValueError):
        store.supersede_archive("run-x", history(1, 2, 3))
    assert store.supersede_archive("run-1", history(1, 2, 3))
    record = store.load_archive("run-1")
    assert record is not None and record.intact and record.event_count == 3
    assert record.reason == "closed" and [a.run_id for a in store.list_archives("t")] == ["run-1"]
    with store.engine.begin() as conn:  # an altered archive is evidence: never overwritten
        conn.execute(text("UPDATE archives SET history = :h WHERE run_id = 'run-1'"),
                     {"h": history(1, 2, 3) + " "})
    with pytest.raises(ArchiveConflictError):
        store.supersede_archive("run-1", history(1, 2, 3, 4))
