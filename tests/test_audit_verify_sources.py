"""`audit verify` sees a task wherever it exists, names the cause of a finding first, tells a
missing archive from a divergence, and checks the read models against the events.

Each test copies the tasks it drove on the time-skipping server out of the session's store
into a store of its own (so tampering here never reaches other tests, and `--all` covers only
these tasks), then tampers with the copy as a forger with write access to the database would."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment

from audit import checkpoint
from infra.db.store import EventStore, open_store
from tests import test_audit_verify
from tests.conftest import WORKFLOW_QUEUE
from tests.histories.record_histories import drive
from tests.test_audit_verify import _address, _json, audit
from tests.test_audit_views import settled
from tests.test_keytask_workflow import start, update

cli_env = test_audit_verify.cli_env  # the fixture, shared

TABLES = ("events", "tasks", "inspections", "findings", "notices", "outbox", "archives")


def copy_of(source: EventStore, tmp_path: Path, task_ids: list[str]) -> EventStore:
    """A store holding only `task_ids`' rows of every table, copied from `source`."""
    path = tmp_path / "copy.db"
    src = sqlite3.connect(str(source.engine.url.database))
    dst = sqlite3.connect(str(path))
    try:
        src.backup(dst)
        marks = ",".join("?" * len(task_ids))
        for table in TABLES:
            dst.execute(f"DELETE FROM {table} WHERE task_id NOT IN ({marks})", task_ids)
        dst.commit()
    finally:
        src.close()
        dst.close()
    return open_store(f"sqlite:///{path}")


def delete_rows(store: EventStore, task_id: str, *tables: str) -> None:
    with store.engine.begin() as conn:
        for table in tables:
            conn.execute(text(f"DELETE FROM {table} WHERE task_id = :t"), {"t": task_id})


def plain(output: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def task_of(report: dict[str, Any], task_id: str) -> dict[str, Any]:
    (task,) = [t for t in report["tasks"] if t["task_id"] == task_id]
    return task


async def test_task_with_every_event_deleted_is_a_finding(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any,
        tmp_path: Path) -> None:
    task_id = await drive(ts_env, "sanming", WORKFLOW_QUEUE)
    other = await drive(ts_env, "sanming", WORKFLOW_QUEUE)
    store = copy_of(wf_store, tmp_path, [task_id, other])
    assert store.list_notices(task_id) and store.list_archives(task_id)
    key = checkpoint.generate_key(tmp_path / "audit.key")
    cp = tmp_path / "heads.json"
    checkpoint.write_checkpoint(checkpoint.make_checkpoint(store, key), cp)
    cli_env(store, _address(ts_env))
    code, out = await audit("verify", "--all", "--source", "archive", "--json")
    assert code == 0, out

    delete_rows(store, task_id, "events")
    code, out = await audit("verify", "--all", "--source", "archive", "--json")
    assert code == 1, out
    report = _json(out)
    task = task_of(report, task_id)
    assert task["verdict"] == "tampered" and task["first_bad_seq"] == 1
    assert task["reason"].startswith("no-events: no events in the store, but the task exists in")
    for where in ("the read model (tasks)", "the archives", "the notices"):
        assert where in task["reason"], task["reason"]
    assert task["divergences"][0]["kind"] == "no-events"
    assert task_of(report, other)["verdict"] == "ok"

    # one task by name: a finding (1), not a usage error (2); Temporal still has the task
    code, out = await audit("verify", task_id)
    assert code == 1, out
    assert "no events in the store, but the task exists in" in out and "Temporal" in out

    # only the signed checkpoint remembers the task
    delete_rows(store, task_id, *TABLES)
    code, out = await audit("verify", "--all", "--source", "archive", "--json")
    assert code == 0 and task_id not in out, out  # nothing anywhere in the store: unknown
    code, out = await audit("verify", "--all", "--source", "archive", "--checkpoint", str(cp),
                            "--json")
    task = task_of(_json(out), task_id)
    assert code == 1 and "the checkpoint" in task["reason"], out
    code, out = await audit("verify", task_id, "--source", "archive")
    assert code == 2 and "no task" in out, out  # nowhere at all: a usage error
    store.engine.dispose()


async def test_altered_archive_is_named_before_any_divergence(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any,
        tmp_path: Path) -> None:
    task_id = await drive(ts_env, "lifecycle", WORKFLOW_QUEUE)
    store = copy_of(wf_store, tmp_path, [task_id])
    assert len(store.load(task_id)) > 20  # more stored seqs than the divergence limit
    (record,) = store.list_archives(task_id)
    where = record.history.index("KeyTask")
    altered = record.history[:where] + "KeyTasK" + record.history[where + 7:]
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE archives SET history = :h WHERE run_id = :r"),
                     {"h": altered, "r": record.run_id})
    cli_env(store, _address(ts_env))
    code, out = await audit("verify", task_id, "--source", "archive", "--json")
    assert code == 1, out
    task = task_of(_json(out), task_id)
    assert task["verdict"] == "tampered"
    first = task["divergences"][0]
    assert first["kind"] == "archive" and first["run_id"] == record.run_id
    assert "sha256" in first["reason"] and "altered" in first["reason"]
    assert task["reason"] == f"archive: {first['reason']}"
    code, out = await audit("verify", task_id, "--source", "archive")
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith(f"{task_id}:")]
    assert "sha256" in lines[0] and "altered" in lines[0], out
    # replayed from Temporal, the altered archive is still a finding
    code, out = await audit("verify", task_id, "--source", "live", "--json")
    task = task_of(_json(out), task_id)
    assert code == 1 and task["divergences"][0]["kind"] == "archive", out
    store.engine.dispose()


async def test_running_task_without_archive_says_so(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any,
        tmp_path: Path) -> None:
    handle, _ = await start(ts_env, due_days=(30,), progress=(100,))
    await update(handle, "acknowledge", actor="unit.member")
    await settled(wf_store, handle)
    closed = await drive(ts_env, "sanming", WORKFLOW_QUEUE)
    store = copy_of(wf_store, tmp_path, [handle.id, closed])
    assert not store.list_archives(handle.id)
    cli_env(store, _address(ts_env))
    code, out = await audit("verify", handle.id, "--source", "archive", "--json")
    assert code == 2, out  # the check asked for cannot be made yet: not a finding
    task = task_of(_json(out), handle.id)
    assert task["verdict"] == "no-archive" and task["first_bad_seq"] is None
    assert task["chain"]["ok"] is True and task["divergences"] == []
    assert "no archive yet" in task["reason"] and "still running" in task["reason"]
    code, out = await audit("verify", handle.id, "--source", "archive")
    assert code == 2 and "no archive yet" in out and "divergent" not in out, out
    code, out = await audit("verify", "--help")
    assert "no archive yet" in plain(out), out
    # the same task against Temporal verifies
    code, out = await audit("verify", handle.id, "--source", "live")
    assert code == 0, out
    # a closed task whose archive is gone is a finding, and a finding outweighs exit 2
    delete_rows(store, closed, "archives")
    code, out = await audit("verify", "--all", "--source", "archive", "--json")
    report = _json(out)
    assert code == 1, out
    assert task_of(report, handle.id)["verdict"] == "no-archive"
    task = task_of(report, closed)
    assert task["verdict"] == "tampered" and "has no archive" in task["reason"], task
    store.engine.dispose()


async def test_forged_read_model_is_a_finding(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any,
        tmp_path: Path) -> None:
    task_id = await drive(ts_env, "sanming", WORKFLOW_QUEUE)
    store = copy_of(wf_store, tmp_path, [task_id])
    cli_env(store, _address(ts_env))
    code, out = await audit("verify", task_id, "--source", "archive")
    assert code == 0, out
    assert "not covered" in out and "recorded_at" in out  # what verify does not check, stated
    row = store.read_model_rows(task_id)["task"]
    assert (row["status"], row["light"], row["level"]) == ("closed", "green", 0)
    with store.engine.begin() as conn:  # the board would show it red, escalated, still open
        conn.execute(text("UPDATE tasks SET light = 'red', level = 3, status = 'active' "
                          "WHERE task_id = :t"), {"t": task_id})
        conn.execute(text(
            "INSERT INTO inspections (inspection_id, task_id, inspector, visited_at, place, "
            "outcome, nodes, findings_count) VALUES ('forged', :t, 'supervisor', "
            "'2026-01-01 00:00:00.000000', '村委', '达标', '[]', 0)"), {"t": task_id})
    for extra in ((), ("--chain-only",)):
        code, out = await audit("verify", task_id, "--source", "archive", "--json", *extra)
        assert code == 1, out
        report = _json(out)
        task = task_of(report, task_id)
        assert task["verdict"] == "divergent" and task["chain"]["ok"] is True
        (forged,) = [d for d in task["divergences"] if d["kind"] == "read-model"]
        for what in ("tasks.light", "tasks.level", "tasks.status", "inspections forged"):
            assert what in forged["reason"], forged["reason"]
        assert "recorded_at" in " ".join(report["not_covered"])
    code, out = await audit("verify", "--help")
    assert "recorded_at" in plain(out) and "read model" in plain(out)
    store.engine.dispose()

