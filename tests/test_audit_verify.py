"""`audit verify`, `audit replay`, `audit archive`: tampering and divergence are found and named
by their first bad seq; a history exported by the real `temporal` CLI replays; closed runs'
archives are completed. The CLI runs in-process (typer's runner, in a thread, so its own event
loop does not meet the session's) except where the real executables are the point."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from audit import checkpoint
from audit.chain_check import verify_task_chain
from audit.cli import audit_app
from audit.replay import verify_task
from domain.canonical import canonical_json
from domain.hashchain import event_hash_canonical, genesis_hash
from infra.db.store import EventStore, open_store
from infra.settings import get_settings
from infra.temporal.binaries import temporal_cli_path
from tests.conftest import WORKFLOW_QUEUE
from tests.histories.record_histories import drive

ROOT = Path(__file__).resolve().parent.parent


def _address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


def _url(store: EventStore) -> str:
    return store.engine.url.render_as_string(hide_password=False)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point the CLI's settings at a store and a server, for the duration of one test."""

    def point(store: EventStore, address: str) -> None:
        monkeypatch.setenv("DATABASE_URL", _url(store))
        monkeypatch.setenv("TEMPORAL_ADDRESS", address)
        monkeypatch.setenv("COLUMNS", "200")
        get_settings.cache_clear()

    yield point
    get_settings.cache_clear()


async def audit(*args: str) -> tuple[int, str]:
    """`starter.py audit ...` in-process, in a thread: (exit code, stdout + stderr)."""
    result = await asyncio.to_thread(CliRunner().invoke, audit_app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _json(output: str) -> Any:
    return json.loads(output[output.index("{"):])


def _rewrite(store: EventStore, task_id: str, seq: int, field: str, value: Any,
             rechain: bool) -> None:
    """Edit one payload field of a stored event; with `rechain`, recompute every hash from
    there on, as a forger with write access would (the chain then verifies)."""
    with store.engine.begin() as conn:
        rows = conn.execute(text("SELECT seq, payload FROM events WHERE task_id = :t ORDER BY seq"),
                            {"t": task_id}).all()
        prev = genesis_hash(task_id)
        for row_seq, payload in rows:
            event = json.loads(payload)
            if row_seq == seq:
                event[field] = value
            raw = canonical_json(event)
            new_hash = event_hash_canonical(prev, raw)
            if row_seq == seq or (rechain and row_seq > seq):
                values: dict[str, Any] = {"p": raw.decode(), "t": task_id, "s": row_seq}
                if rechain:
                    conn.execute(text("UPDATE events SET payload = :p, prev_hash = :ph, hash = :h "
                                      "WHERE task_id = :t AND seq = :s"),
                                 {**values, "ph": prev, "h": new_hash})
                else:
                    conn.execute(text("UPDATE events SET payload = :p WHERE task_id = :t AND "
                                      "seq = :s"), values)
            prev = new_hash


def _first(events: list[Any], type_: str) -> Any:
    return next(e for e in events if e.event["type"] == type_)


async def test_tampered_event_fails_verify_naming_its_seq(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any) -> None:
    task_id = await drive(ts_env, "continued", WORKFLOW_QUEUE)
    cli_env(wf_store, _address(ts_env))
    code, out = await audit("verify", task_id)
    assert code == 0, out
    assert "ok" in out and task_id in out
    progress = _first(wf_store.load(task_id), "ProgressReported")
    _rewrite(wf_store, task_id, progress.seq, "percent", 95, rechain=False)
    code, out = await audit("verify", task_id)
    assert code == 1, out
    assert "tampered" in out and f"{task_id}: chain: hash mismatch" in out
    code, out = await audit("verify", task_id, "--json")
    report = _json(out)
    assert code == 1 and report["ok"] is False
    (task,) = report["tasks"]
    assert task["verdict"] == "tampered" and task["first_bad_seq"] == progress.seq
    # the replay disagrees at the same seq: the store says 95, the engine's history 10
    assert task["divergences"][0]["seq"] == progress.seq
    assert task["divergences"][0]["kind"] == "store"


async def test_consistently_rechained_store_is_divergent_at_the_edit(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any) -> None:
    task_id = await drive(ts_env, "lifecycle", WORKFLOW_QUEUE)
    cli_env(wf_store, _address(ts_env))
    accepted = _first(wf_store.load(task_id), "NodeAccepted")
    _rewrite(wf_store, task_id, accepted.seq, "note", "验收合格（改）", rechain=True)
    assert verify_task_chain(wf_store, task_id).ok  # the forger kept the chain whole
    code, out = await audit("verify", task_id, "--json", "--source", "live")
    report = _json(out)
    assert code == 1
    (task,) = report["tasks"]
    assert task["chain"]["ok"] is True and task["verdict"] == "divergent"
    assert task["first_bad_seq"] == accepted.seq
    assert "note" in task["reason"] and task["divergences"][0]["kind"] == "store"
    code, out = await audit("verify", task_id)
    assert code == 1 and "divergent" in out and f"{accepted.seq}" in out


async def test_history_of_another_task_is_divergent_from_seq_1(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any,
        tmp_path: Path) -> None:
    mine = await drive(ts_env, "sanming", WORKFLOW_QUEUE)
    other = await drive(ts_env, "escalation", WORKFLOW_QUEUE)
    cli_env(wf_store, _address(ts_env))
    history = await ts_env.client.get_workflow_handle(other).fetch_history()
    path = tmp_path / "other.json"
    path.write_text(history.to_json(), encoding="utf-8")
    code, out = await audit("replay", str(path))  # against its own task: agrees
    assert code == 0, out
    code, out = await audit("replay", str(path), "--task", mine, "--json")
    report = _json(out)
    assert code == 1 and report["first_bad_seq"] == 1
    assert report["divergences"][0]["kind"] in ("history", "store")
    assert any(d["seq"] == 1 and d["kind"] == "store" for d in report["divergences"])
    # the same forgery inside the store: this task's archive replaced by the other task's
    # history, its digest recomputed so that the archive looks intact
    forged = history.to_json()
    with wf_store.engine.begin() as conn:
        conn.execute(text("UPDATE archives SET history = :h, sha256 = :d WHERE task_id = :t"),
                     {"h": forged, "d": hashlib.sha256(forged.encode()).hexdigest(), "t": mine})
    verdict = await verify_task(mine, store=wf_store, client=None, source="archive")
    assert not verdict.ok and verdict.first_bad_seq == 1


async def test_checkpoint_heads_reach_the_chain_check(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore, cli_env: Any,
        tmp_path: Path) -> None:
    task_id = await drive(ts_env, "sanming", WORKFLOW_QUEUE)
    cli_env(wf_store, _address(ts_env))
    head = wf_store.head(task_id)
    cp = tmp_path / "heads.json"
    # a real signed checkpoint (audit/checkpoint.py): a forger who rewrites a task and
    # recomputes its chain is caught by the chain check too, not only by the replay
    key = checkpoint.generate_key(tmp_path / "audit.key")
    checkpoint.write_checkpoint(checkpoint.make_checkpoint(wf_store, key), cp)
    code, out = await audit("verify", task_id, "--checkpoint", str(cp))
    assert code == 0, out
    fired = _first(wf_store.load(task_id), "EscalationFired")
    _rewrite(wf_store, task_id, fired.seq, "demand", "无", rechain=True)
    code, out = await audit("verify", task_id, "--checkpoint", str(cp), "--json")
    (task,) = _json(out)["tasks"]
    assert code == 1 and task["verdict"] == "tampered" and task["first_bad_seq"] == fired.seq
    assert task["chain"]["first_bad_seq"] == head.seq and "checkpoint" in task["chain"]["reason"]
    # truncation: a second task loses its last two events after the checkpoint was signed
    other = await drive(ts_env, "sanming", WORKFLOW_QUEUE)
    checkpoint.write_checkpoint(checkpoint.make_checkpoint(wf_store, key), cp)
    other_head = wf_store.head(other)
    with wf_store.engine.begin() as conn:
        conn.execute(text("DELETE FROM events WHERE task_id = :t AND seq > :s"),
                     {"t": other, "s": other_head.seq - 2})
    code, out = await audit("verify", other, "--checkpoint", str(cp), "--json")
    (task,) = _json(out)["tasks"]
    assert code == 1 and task["first_bad_seq"] == other_head.seq - 1, out
    assert "truncated" in task["reason"]
    code, out = await audit("verify", "--all", "--checkpoint", str(cp), "--chain-only", "--json")
    report = _json(out)
    assert code == 1
    (mine,) = [t for t in report["tasks"] if t["task_id"] == other]
    assert mine["verdict"] == "tampered" and mine["first_bad_seq"] == other_head.seq - 1


@pytest.mark.e2e
async def test_cli_exported_history_replays_and_archive_completes(
        dev_server: Any, tmp_path: Path, cli_env: Any) -> None:
    """On a real dev server: a task runs to its end; `temporal workflow show --output json`
    exports its history; `audit replay` agrees with the store; `audit archive --all-closed`
    replaces the workflow's own (short) archive by the complete history."""
    from tests.scenario import make_spec
    from worker import running_worker
    from workflows.inputs import KeyTaskInput
    from workflows.keytask import WORKFLOW_NAME
    from workflows.search import initial_search_attributes

    url = f"sqlite:///{tmp_path / 'duban.db'}"
    store = open_store(url)
    client = dev_server.client
    spec = make_spec(dt.datetime.now(dt.UTC), plan_code=f"audit{os.getpid()}")
    async with running_worker(client, store, "audit-e2e"):
        handle = await client.start_workflow(
            WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id, task_queue="audit-e2e",
            search_attributes=initial_search_attributes(spec))
        await handle.signal("progress", {"actor": "unit.member", "percent": "lots"})
        for name, payload in [("acknowledge", {"actor": "unit.member"}),
                              ("claim", {"actor": "unit.member", "node": "N1"}),
                              ("accept", {"actor": "supervisor", "node": "N1"}),
                              ("claim", {"actor": "unit.member", "node": "N2"}),
                              ("accept", {"actor": "lead.head", "node": "N2"})]:
            await handle.execute_update(name, payload)
        assert (await asyncio.wait_for(handle.result(), 30))["status"] == "closed"
    shown = await asyncio.to_thread(
        subprocess.run, [str(temporal_cli_path()), "workflow", "show", "--workflow-id",
                         spec.task_id, "--address", dev_server.address, "--output", "json"],
        capture_output=True, text=True, timeout=60, check=True)
    exported = tmp_path / "history.json"
    exported.write_text(shown.stdout, encoding="utf-8")
    env = {**os.environ, "DATABASE_URL": url, "TEMPORAL_ADDRESS": dev_server.address,
           "COLUMNS": "200"}
    real = await asyncio.to_thread(
        subprocess.run, [sys.executable, "starter.py", "audit", "replay", str(exported)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert real.returncode == 0, real.stdout + real.stderr
    assert "equal the store's" in real.stdout
    archived = store.load_archive(task_id=spec.task_id)
    assert archived is not None and archived.reason == "closed"
    cli_env(store, dev_server.address)
    for _ in range(100):  # visibility is eventually consistent
        code, out = await audit("archive", "--all-closed", "--json")
        mine = [r for r in _json(out)["runs"] if r["task_id"] == spec.task_id]
        if mine:
            break
        await asyncio.sleep(0.2)
    assert code == 0 and mine[0]["status"] == "superseded", out
    assert mine[0]["events_after"] > mine[0]["events_before"] == archived.event_count
    complete = store.load_archive(archived.run_id)
    assert complete is not None and complete.intact and complete.event_count == len(
        json.loads(shown.stdout)["events"])
    code, out = await audit("verify", spec.task_id, "--source", "archive", "--json")
    (task,) = _json(out)["tasks"]
    assert code == 0 and task["verdict"] == "ok" and task["runs"][0]["close"] == "completed"
    # --all also lists Temporal's visibility. The dev server is the session's: workflows of
    # other tests recorded into other stores are, for this store, tasks without events.
    code, out = await audit("verify", "--all", "--source", "live", "--json")
    report = _json(out)
    foreign = [t for t in report["tasks"] if not t["ok"]]
    assert all(t["stored_events"] == 0 and t["sources"] == ["Temporal"] for t in foreign), out
    assert code == (1 if foreign else 0), out
    (mine,) = [t for t in report["tasks"] if t["task_id"] == spec.task_id]
    assert mine["verdict"] == "ok"
    # every row of the task deleted from the store: only Temporal's visibility still knows it
    with store.engine.begin() as conn:
        for table in ("events", "tasks", "inspections", "findings", "notices", "outbox",
                      "archives"):
            conn.execute(text(f"DELETE FROM {table} WHERE task_id = :t"), {"t": spec.task_id})
    code, out = await audit("verify", "--all", "--source", "live", "--json")
    (mine,) = [t for t in _json(out)["tasks"] if t["task_id"] == spec.task_id]
    assert code == 1 and mine["verdict"] == "tampered", out
    assert mine["reason"] == "no-events: no events in the store, but the task exists in Temporal"
    store.engine.dispose()
