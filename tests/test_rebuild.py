"""Projection rebuild equals the live projection (SQLite and PostgreSQL).

A few tasks are driven through commands and rungs on the time-skipping server; the worker
records their events and live read models into the session's SQLite store. Rebuilding from the
events alone must give the same rows there, and in a copy of the events on each backend."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from audit.rebuild import compare_rows, read_model_for, rebuild, rebuild_task
from domain import events as ev
from infra.db.store import EventStore
from tests.test_audit_views import settled
from tests.test_keytask_workflow import start, update


@pytest.fixture(scope="module")
async def driven(ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore) -> list[str]:
    """Three tasks: done on time and closed; late with rungs; inspected, with a finding sent
    back and an extension granted."""
    done, _ = await start(ts_env, due_days=(5,), progress=(100,))
    late, late_spec = await start(ts_env, due_days=(3,), progress=(100,))
    insp, insp_spec = await start(ts_env, due_days=(4, 30), progress=(50, 100))
    await update(done, "acknowledge", actor="unit.member")
    await update(done, "claim", actor="unit.member", node="N1")
    await update(done, "accept", actor="supervisor", node="N1")
    await update(late, "progress", actor="unit.member", percent=10)
    await update(insp, "claim", actor="unit.member", node="N1")
    now = await ts_env.get_current_time()
    await update(insp, "inspect", actor="supervisor", inspection_id="r1",
                 visited_at=now.isoformat(), place="二组", nodes=["N1"], outcome="基本达标",
                 findings=[{"severity": "较重", "description": "档案缺页", "node": "N1",
                            "evidence": [{"sha256": "ab" * 32, "geo": "30.1,120.5"}]}])
    fid = (await insp.query("state"))["findings"][0]["finding_id"]
    await update(insp, "report_rectification", actor="unit.member", finding_id=fid)
    await update(insp, "verify_rectification", actor="supervisor", finding_id=fid, passed=False,
                 note="仍缺")
    await update(insp, "request_extension", actor="unit.member", node="N2", reason="农忙",
                 proposed_due=(insp_spec.nodes[1].due + dt.timedelta(days=5)).isoformat())
    await update(insp, "decide_extension", actor="leader", node="N2", approve=True)
    await ts_env.sleep(late_spec.nodes[0].due - await ts_env.get_current_time()
                       + dt.timedelta(days=8))
    for handle in (late, insp):
        await settled(wf_store, handle)
    assert (await done.result())["status"] == "closed"
    ids = [done.id, late.id, insp.id]
    assert any(e.event["type"] == "EscalationFired" for e in wf_store.load(late.id))
    return ids


def wipe(store: EventStore, task_id: str) -> None:
    with store.engine.begin() as conn:
        for table in ("findings", "inspections", "tasks"):
            conn.execute(sa.text(f"DELETE FROM {table} WHERE task_id = :t"), {"t": task_id})


def test_rebuild_equals_live_projection_sqlite(driven: list[str], wf_store: EventStore) -> None:
    for task_id in driven:
        live = wf_store.read_model_rows(task_id)
        assert live["task"] is not None
        (checked,) = rebuild(wf_store, [task_id], check=True)
        assert checked.ok and not checked.differences, checked.differences
        # damage the read model: check finds every difference and writes nothing
        with wf_store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE tasks SET light = 'purple', level = 9 "
                                 "WHERE task_id = :t"), {"t": task_id})
            conn.execute(sa.text("UPDATE findings SET status = 'closed' WHERE task_id = :t"),
                         {"t": task_id})
        damaged = rebuild_task(wf_store, task_id, check=True)
        assert not damaged.ok and not damaged.written
        assert any(d.startswith("tasks.light: stored 'purple'") for d in damaged.differences)
        assert wf_store.read_model_rows(task_id)["task"]["light"] == "purple"
        # rebuilt from the events: back to the live projection, row for row
        fixed = rebuild_task(wf_store, task_id)
        assert fixed.ok and fixed.written
        assert wf_store.read_model_rows(task_id) == live
    inspected = wf_store.read_model_rows(driven[2])
    assert len(inspected["inspections"]) == 1 and len(inspected["findings"]) == 1
    assert inspected["findings"][0]["evidence"][0]["geo"] == "30.1,120.5"


def test_rebuild_equals_live_projection_on_each_backend(driven: list[str], wf_store: EventStore,
                                                        store: EventStore) -> None:
    for task_id in driven:
        events = [s.event for s in wf_store.load(task_id)]
        rm = read_model_for(ev.parse_event(e) for e in events)
        store.append(task_id, events, read_model=rm)
        live = store.read_model_rows(task_id)
        # the same rows as the worker's live projection in the other store (backend-neutral)
        assert compare_rows(wf_store.read_model_rows(task_id), live) == []
        assert store.head(task_id) == wf_store.head(task_id)
        wipe(store, task_id)
        (checked,) = rebuild(store, [task_id], check=True)
        assert checked.differences == ["tasks: row missing in the store"] + [
            f"{t} {k}: missing in the store"
            for t, key in (("inspections", "inspection_id"), ("findings", "finding_id"))
            for k in sorted(r[key] for r in live[t])]
    results = rebuild(store)  # every task
    assert [r.task_id for r in results] == sorted(driven)
    assert all(r.ok and r.written for r in results)
    for task_id in driven:
        assert compare_rows(wf_store.read_model_rows(task_id), store.read_model_rows(task_id)) == []
    assert all(r.ok and not r.differences for r in rebuild(store, check=True))


def test_broken_chain_is_not_rebuilt_and_orphans_are_reported(driven: list[str],
                                                              wf_store: EventStore,
                                                              store: EventStore) -> None:
    task_id = driven[1]
    store.append(task_id, [s.event for s in wf_store.load(task_id)])
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET hash = :h WHERE task_id = :t AND seq = 2"),
                     {"h": "0" * 64, "t": task_id})
    (broken,) = rebuild(store, [task_id])
    assert not broken.ok and broken.error and "chain broken at seq 2" in broken.error
    assert store.read_model_rows(task_id)["task"] is None  # nothing projected from it
    (unknown,) = rebuild(store, ["no/such/task"])
    assert unknown.error and "no events" in unknown.error


def test_store_rebuild_command(driven: list[str], wf_store: EventStore, store: EventStore,
                               db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import starter
    from infra.settings import get_settings

    for task_id in driven:
        store.append(task_id, [s.event for s in wf_store.load(task_id)])  # no read models
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    run = CliRunner()
    try:
        check = run.invoke(starter.app, ["store", "rebuild", "--check", "--json"])
        assert check.exit_code == 1, check.output
        doc = json.loads(check.stdout)
        assert doc["tasks"] == 3 and not doc["ok"]
        assert all("tasks: row missing in the store" in r["differences"] for r in doc["results"])
        one = run.invoke(starter.app, ["store", "rebuild", "--task", driven[0]])
        assert one.exit_code == 0, one.output
        assert "1 rewritten" in one.stdout
        assert store.read_model_rows(driven[0])["task"]["status"] == "closed"
        everything = run.invoke(starter.app, ["store", "rebuild"])
        assert everything.exit_code == 0 and "2 rewritten" in everything.stdout
        again = run.invoke(starter.app, ["store", "rebuild", "--check"])
        assert again.exit_code == 0 and "0 with problems" in again.stdout, again.output
    finally:
        get_settings.cache_clear()
    for task_id in driven:
        assert compare_rows(wf_store.read_model_rows(task_id), store.read_model_rows(task_id)) == []
