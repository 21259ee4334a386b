"""The event store, on SQLite and (with DUBAN_TEST_POSTGRES_URL) PostgreSQL.

Fixtures `db_url` and `store` come from tests/fixtures_db.py (loaded by conftest)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from audit.chain_check import _StoreAudit, verify_store, verify_task_chain
from domain.canonical import canonical_json
from domain.hashchain import genesis_hash, verify_chain
from infra.db.engine import make_engine
from infra.db.migrate import upgrade
from infra.db.models import metadata
from infra.db.store import (
    AppendResult,
    ArchiveConflictError,
    ConflictError,
    EventStore,
    GapError,
    Head,
    ReadModel,
    events_t,
)

UTC = dt.UTC
T = "PLAN-2026/两委增补/村001"


def iso(moment: dt.datetime) -> str:
    """The form pydantic's model_dump(mode="json") gives an aware UTC datetime."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ev(task_id: str, seq: int, type_: str = "ProgressReported", **body: Any) -> dict[str, Any]:
    at = dt.datetime(2026, 11, 1, 8, tzinfo=UTC) + dt.timedelta(hours=seq)
    return {
        "task_id": task_id,
        "seq": seq,
        "type": type_,
        "at": iso(at),
        "actor": "unit:乡镇A",
        "v": 1,
        **body,
    }


def batch(task_id: str, first: int, last: int) -> list[dict[str, Any]]:
    return [ev(task_id, s, percent=s) for s in range(first, last + 1)]


def varied_events(task_id: str = T) -> list[dict[str, Any]]:
    """Twenty events shaped like the domain's: nested objects and lists, Chinese text, escapes,
    bools, nulls, empty containers, big ints, times with and without microseconds."""
    base = dt.datetime(2026, 11, 1, 1, 2, 3, tzinfo=UTC)

    def when(hours: int, us: int = 0) -> str:
        return iso(base + dt.timedelta(hours=hours, microseconds=us))

    ev_ = {"sha256": "ab" * 32, "name": "照片.jpg", "geo": "36.1,120.3"}
    bodies: list[tuple[str, str, dict[str, Any]]] = [
        (
            "TaskAssigned",
            "system",
            {
                "spec": {
                    "code": "LW-01",
                    "title": "两委增补",
                    "lead_unit": None,
                    "nodes": [{"key": "N1", "due": when(700)}],
                }
            },
        ),
        ("Acknowledged", "unit:乡镇A", {"note": "签收"}),
        (
            "ProgressReported",
            "unit:乡镇A",
            {"percent": 10, "note": "摸底\n完成\t", "meets_report_node": None},
        ),
        ("NodeClaimed", "unit:乡镇A", {"node": "N1", "note": "", "evidence": [ev_]}),
        (
            "ClaimRejected",
            "supervisor:督查组1",
            {"node": "N1", "reason": '证据不足 "引号" \\ 反斜杠'},
        ),
        (
            "ExtensionRequested",
            "unit:乡镇A",
            {
                "node": "N1",
                "reason": "选举推迟",
                "current_due": when(700),
                "proposed_due": when(900),
            },
        ),
        (
            "ExtensionDecided",
            "lead:组织部",
            {
                "node": "N1",
                "approved": True,
                "reason": "",
                "original_due": when(700),
                "previous_due": when(700),
                "granted_due": when(900),
            },
        ),
        (
            "InspectionRecorded",
            "supervisor:督查组1",
            {
                "inspection_id": "I-1",
                "inspector": "张三",
                "visited_at": when(30, 500),
                "place": "村委会",
                "nodes": ["N1"],
                "outcome": "不达标",
                "findings": [
                    {
                        "finding_id": "F-1",
                        "severity": "major",
                        "description": "台账缺失",
                        "node": "N1",
                        "evidence": [ev_],
                    }
                ],
                "recheck": False,
            },
        ),
        (
            "RectificationOrdered",
            "system",
            {"finding_id": "F-1", "severity": "major", "deadline": when(200)},
        ),
        (
            "RectificationReported",
            "unit:乡镇A",
            {"finding_id": "F-1", "note": "已补齐", "evidence": []},
        ),
        (
            "RectificationVerified",
            "supervisor:督查组1",
            {"finding_id": "F-1", "passed": False, "note": "仍缺"},
        ),
        (
            "EscalationFired",
            "system",
            {
                "step_key": "N1/orange",
                "target_kind": "node",
                "target": "N1",
                "ladder": "三明",
                "step": "orange",
                "title": "橙色预警",
                "level": 2,
                "action": "notice",
                "recipients": [{"kind": "unit_head", "unit": "乡镇A"}],
                "demand": "限期整改",
                "due_since": when(700),
                "required_at": when(701, 1),
                "reply_by": None,
                "calendar_estimated": [2027],
            },
        ),
        (
            "LightChanged",
            "system",
            {"previous": "green", "light": "red", "reasons": ["N1 overdue"]},
        ),
        (
            "FalseReportFound",
            "supervisor:督查组1",
            {"node": "N1", "inspection_id": "I-1", "claimed_at": None},
        ),
        (
            "NodeReopened",
            "supervisor:督查组1",
            {"node": "N1", "reason": "虚报", "new_due": when(950)},
        ),
        (
            "NodeAccepted",
            "supervisor:督查组1",
            {
                "node": "N1",
                "via": "acceptance",
                "inspection_id": None,
                "claimed_at": when(940),
                "on_time": False,
                "note": "",
            },
        ),
        (
            "ProgressReported",
            "unit:乡镇A",
            {
                "percent": 100,
                "note": "emoji 😀, U+2028 \u2028, NUL-ish \x01",
                "meets_report_node": "N1",
            },
        ),
        (
            "CommandRejected",
            "unit:乡镇B",
            {"command": {"name": "bogus", "args": {"x": [1, [2, {}]]}}, "reason": "unknown signal"},
        ),
        (
            "Note",
            "system",
            {"empty_list": [], "empty_dict": {}, "zero": 0, "neg": -5, "big": 2**53 - 1, "t": True},
        ),
        ("TaskCompleted", "system", {}),
    ]
    out = []
    for seq, (type_, actor, body) in enumerate(bodies, start=1):
        out.append(
            {
                "task_id": task_id,
                "seq": seq,
                "type": type_,
                "at": when(seq * 5, seq * 37 % 3 * 250_000),
                "actor": actor,
                "v": 1 + seq % 2,
                **body,
            }
        )
    return out


def task_row(task_id: str, last_seq: int, **over: Any) -> dict[str, Any]:
    row = {
        "task_id": task_id,
        "plan_code": "PLAN-2026",
        "task_code": "LW-01",
        "unit_code": "村001",
        "parent_unit": "乡镇A",
        "title": "两委增补",
        "lead_unit": "组织部",
        "ladder": "三明",
        "status": "in_progress",
        "light": "green",
        "level": 0,
        "progress": 10,
        "next_due_at": dt.datetime(2026, 12, 31, 15, 59, 59, tzinfo=UTC),
        "nodes": [{"key": "N1", "done": False}],
        "open_findings": 0,
        "last_seq": last_seq,
        "updated_at": dt.datetime(2026, 11, 23, tzinfo=UTC),
    }
    row.update(over)
    return row


def count_rows(store: EventStore, task_id: str | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(events_t)
    if task_id is not None:
        stmt = stmt.where(events_t.c.task_id == task_id)
    with store.engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


# --- schema ---------------------------------------------------------------------------------


def test_migration_matches_models(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)  # idempotent
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_sqlite_engine_settings(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'x.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()
    assert (tmp_path / "deep" / "er" / "x.db").exists()


# --- append ---------------------------------------------------------------------------------


def test_append_and_load(store: EventStore) -> None:
    events = varied_events()
    result = store.append(T, events)
    assert (result.appended, result.skipped, result.head_seq) == (20, 0, 20)
    loaded = store.load(T)
    assert [e.event for e in loaded] == [json.loads(canonical_json(e)) for e in events]
    assert [e.event for e in loaded] == events  # key order aside, exactly what was given
    assert store.head(T) == Head(20, result.head_hash) == Head(20, loaded[-1].hash)
    assert store.head("nothing") == Head(0, genesis_hash("nothing"))
    first = loaded[0]
    assert first.prev_hash == genesis_hash(T)
    assert first.occurred_at == dt.datetime.fromisoformat(events[0]["at"])
    assert first.occurred_at.tzinfo is not None
    assert (first.type, first.actor, first.schema_version) == ("TaskAssigned", "system", 2)
    rows = [(e.seq, e.event, e.prev_hash, e.hash) for e in loaded]
    assert verify_chain(T, rows).ok
    assert verify_task_chain(store, T).ok


def test_same_batch_twice_is_stored_once(store: EventStore) -> None:
    first = store.append(T, batch(T, 1, 5))
    again = store.append(T, batch(T, 1, 5))
    assert (first.appended, first.skipped) == (5, 0)
    assert (again.appended, again.skipped) == (0, 5)
    assert again.head_hash == first.head_hash
    assert count_rows(store, T) == 5


def test_reappend_after_crash_with_new_events(store: EventStore) -> None:
    """The activity committed 1..5, crashed before acknowledging, and is retried with the
    same events plus the ones produced since: no duplicates, no gap."""
    store.append(T, batch(T, 1, 5))
    result = store.append(T, batch(T, 1, 8))
    assert (result.appended, result.skipped, result.head_seq) == (3, 5, 8)
    assert [e.seq for e in store.load(T)] == list(range(1, 9))
    overlap = store.append(T, batch(T, 4, 10))
    assert (overlap.appended, overlap.skipped, overlap.head_seq) == (2, 5, 10)
    assert verify_task_chain(store, T).ok


def test_reformatted_stored_payload_still_counts_as_the_same(store: EventStore) -> None:
    store.append(T, batch(T, 1, 3))
    original = store.load(T)[1].event
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(events_t)
            .where(events_t.c.task_id == T, events_t.c.seq == 2)
            .values(payload=store._payload_param),
            {"payload_text": json.dumps(original, indent=2, ensure_ascii=True)},
        )
    assert store.append(T, batch(T, 1, 4)).appended == 1
    assert verify_task_chain(store, T).ok  # semantically the same event: not tampering


def test_gap_changes_nothing(store: EventStore) -> None:
    store.append(T, batch(T, 1, 5))
    before = store.head(T)
    with pytest.raises(GapError) as err:
        store.append(T, batch(T, 7, 8))
    assert (err.value.expected, err.value.got) == (6, 7)
    with pytest.raises(GapError) as err:
        store.append(T, [ev(T, 6), ev(T, 8)])  # a gap inside the batch
    assert (err.value.expected, err.value.got) == (7, 8)
    with pytest.raises(GapError):
        store.append("new-task", batch("new-task", 2, 3))
    assert store.head(T) == before and count_rows(store) == 5


def test_conflict_changes_nothing(store: EventStore) -> None:
    store.append(T, batch(T, 1, 5))
    before = store.load(T)
    changed = [ev(T, 5, percent=99), ev(T, 6, percent=6)]
    with pytest.raises(ConflictError) as err:
        store.append(T, changed)
    assert err.value.seq == 5
    assert store.load(T) == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.update(score=0.5), "float"),
        (lambda e: e.update(seq="3"), "'seq' must be int"),
        (lambda e: e.update(v=True), "'v' must be int"),
        (lambda e: e.pop("actor"), "'actor' must be str"),
        (lambda e: e.update(at="2026-11-01T10:00:00"), "no time zone"),
        (lambda e: e.update(at="yesterday"), "ISO-8601"),
        (lambda e: e.update(task_id="other"), "belongs to"),
    ],
)
def test_bad_events_are_refused_and_change_nothing(
    store: EventStore, mutate: Callable[[dict[str, Any]], Any], message: str
) -> None:
    store.append(T, batch(T, 1, 2))
    events = batch(T, 3, 5)
    mutate(events[1])
    with pytest.raises(ValueError, match=message):
        store.append(T, events)
    assert store.head(T).seq == 2 and count_rows(store) == 2


def test_concurrent_appends_of_the_same_batch_store_one_copy(store: EventStore) -> None:
    def race(task_id: str, events: list[dict[str, Any]]) -> list[AppendResult]:
        barrier = threading.Barrier(2)
        results: list[AppendResult] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                barrier.wait()
                results.append(store.append(task_id, events))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        return results

    for round_ in range(5):
        task_id = f"{T}/race{round_}"
        results = race(task_id, batch(task_id, 1, 30))
        assert sorted(r.appended for r in results) == [0, 30]
        assert sorted(r.skipped for r in results) == [0, 30]
        assert count_rows(store, task_id) == 30
        assert verify_task_chain(store, task_id).ok


def test_integrity_error_is_retried_as_an_idempotent_recheck(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that read a stale head hits the unique key; the retry sees the truth."""
    store.append(T, batch(T, 1, 4))
    real = EventStore._read_head
    calls: list[int] = []

    def stale_once(self: EventStore, conn: sa.Connection, task_id: str) -> Head:
        calls.append(1)
        return Head(0, genesis_hash(task_id)) if len(calls) == 1 else real(self, conn, task_id)

    monkeypatch.setattr(EventStore, "_read_head", stale_once)
    result = store.append(T, batch(T, 1, 6))
    assert len(calls) == 2
    assert (result.appended, result.skipped, result.head_seq) == (2, 4, 6)
    assert count_rows(store, T) == 6 and verify_task_chain(store, T).ok


# --- read models ----------------------------------------------------------------------------


def test_read_model_upserts_and_replaces_sets(store: EventStore) -> None:
    inspection = {
        "inspection_id": "I-1",
        "inspector": "张三",
        "visited_at": "2026-11-02T02:00:00Z",
        "place": "村委会",
        "outcome": "不达标",
        "nodes": ["N1"],
        "findings_count": 1,
    }
    finding = {
        "finding_id": "F-1",
        "inspection_id": "I-1",
        "severity": "major",
        "description": "台账缺失",
        "status": "open",
        "deadline": dt.datetime(2026, 11, 20, 8, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "evidence": [{"sha256": "ab" * 32}],
    }
    rm = ReadModel(task_row(T, 3), [inspection], [finding])
    assert store.append(T, batch(T, 1, 3), rm).read_model_applied
    rows = store.read_model_rows(T)
    assert rows["task"]["light"] == "green" and rows["task"]["last_seq"] == 3
    assert rows["findings"][0]["deadline"] == dt.datetime(2026, 11, 20, 0, tzinfo=UTC)
    assert rows["inspections"][0]["visited_at"] == dt.datetime(2026, 11, 2, 2, tzinfo=UTC)
    assert "updated_at" not in rows["task"]

    inspection2 = {**inspection, "inspection_id": "I-2", "outcome": "达标", "findings_count": 0}
    closed = {**finding, "status": "closed", "closed_at": dt.datetime(2026, 11, 10, tzinfo=UTC)}
    rm2 = ReadModel(task_row(T, 5, light="red", level=2, open_findings=0), [inspection2], [closed])
    assert store.append(T, batch(T, 4, 5), rm2).read_model_applied
    rows = store.read_model_rows(T)
    assert (rows["task"]["light"], rows["task"]["level"], rows["task"]["last_seq"]) == ("red", 2, 5)
    assert [i["inspection_id"] for i in rows["inspections"]] == ["I-2"]
    assert rows["findings"][0]["status"] == "closed"

    # A late retry of the first append brings an older projection: it must not win.
    stale = store.append(T, batch(T, 1, 3), rm)
    assert not stale.read_model_applied
    assert store.read_model_rows(T) == rows

    # An empty set clears the task's findings.
    store.replace_read_models(T, ReadModel(task_row(T, 5, light="red", level=2), [inspection2], []))
    assert store.read_model_rows(T)["findings"] == []


def test_read_model_errors_write_nothing(store: EventStore) -> None:
    store.append(T, batch(T, 1, 2), ReadModel(task_row(T, 2)))
    before = store.read_model_rows(T, include_updated_at=True)
    bad_models = [
        ReadModel(task_row(T, 9)),  # ahead of the events
        ReadModel(task_row("other", 3)),
        ReadModel({**task_row(T, 3), "colour": "red"}),
        ReadModel(task_row(T, 3, next_due_at=dt.datetime(2026, 12, 1))),  # naive
        ReadModel(task_row(T, 3), findings=[{"finding_id": "F"}]),  # required fields missing
    ]
    for rm in bad_models:
        with pytest.raises(ValueError):
            store.append(T, [ev(T, 3)], rm)
        assert store.head(T).seq == 2
        assert store.read_model_rows(T, include_updated_at=True) == before


def test_rebuild_equals_live_projection(store: EventStore) -> None:
    rm = ReadModel(task_row(T, 2), [], [])
    store.append(T, batch(T, 1, 2), rm)
    live = store.read_model_rows(T)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tasks"))
    assert store.read_model_rows(T)["task"] is None
    store.replace_read_models(T, ReadModel(task_row(T, 2, updated_at=dt.datetime.now(UTC))))
    assert store.read_model_rows(T) == live


# --- notices, outbox, archives --------------------------------------------------------------


def test_notice_is_recorded_at_most_once(store: EventStore) -> None:
    kwargs: dict[str, Any] = {
        "ladder": "三明",
        "step": "orange",
        "level": 2,
        "title": "督办单",
        "document": "请于三日内整改",
        "node": "N1",
        "reply_by": dt.datetime(2026, 12, 3, tzinfo=UTC),
    }
    assert store.record_notice(T, "N1/orange", **kwargs) is True
    assert store.record_notice(T, "N1/orange", **{**kwargs, "document": "retry"}) is False
    assert store.record_notice(T, "N1/red", **kwargs) is True
    notices = store.list_notices(T)
    assert [(n["step_key"], n["document"]) for n in notices] == [
        ("N1/orange", "请于三日内整改"),
        ("N1/red", "请于三日内整改"),
    ]
    assert notices[0]["reply_by"] == dt.datetime(2026, 12, 3, tzinfo=UTC)
    assert store.list_notices("other") == [] and len(store.list_notices()) == 2


def test_outbox_at_most_once_and_delivery(store: EventStore) -> None:
    body = {"text": "请签收", "task": T}
    assert store.add_outbox(T, "N1/blue", "sms", "乡镇A:书记", "提醒", body)
    assert not store.add_outbox(T, "N1/blue", "sms", "乡镇A:书记", "提醒", body)
    assert store.add_outbox(T, "N1/blue", "sms", "乡镇A:镇长", "提醒", body)
    assert store.add_outbox(T, "N1/blue", "email", "乡镇A:书记", "提醒", body)
    pending = store.list_outbox()
    assert len(pending) == 3 and pending[0]["body"] == body
    assert store.mark_delivered(pending[0]["id"]) is True
    assert store.mark_delivered(pending[0]["id"]) is False
    assert [m["id"] for m in store.list_outbox()] == [m["id"] for m in pending[1:]]
    assert len(store.list_outbox(undelivered_only=False)) == 3


def test_concurrent_outbox_inserts_create_one_row(store: EventStore) -> None:
    barrier = threading.Barrier(4)
    created: list[bool] = []

    def worker() -> None:
        barrier.wait()
        created.append(store.add_outbox(T, "N1/red", "sms", "书记", "s", {}))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created) == [False, False, False, True]


HISTORY = json.dumps(
    {
        "events": [
            {"eventId": "1", "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"},
            {"eventId": "2"},
        ]
    },
    indent=2,
)


def test_archive_is_idempotent_and_tamper_evident(store: EventStore) -> None:
    assert store.archive_history(T, "wf-1", "run-1", "closed", HISTORY) is True
    assert store.archive_history(T, "wf-1", "run-1", "closed", HISTORY) is False
    # Same history, other formatting (a retried archiver): still the same archive.
    assert (
        store.archive_history(T, "wf-1", "run-1", "closed", json.dumps(json.loads(HISTORY)))
        is False
    )
    with pytest.raises(ArchiveConflictError):
        store.archive_history(T, "wf-1", "run-1", "closed", json.dumps({"events": []}))
    record = store.load_archive("run-1")
    assert record is not None and record.intact
    assert record.history == HISTORY and record.event_count == 2
    assert store.archive_history(T, "wf-1", "run-2", "continued_as_new", HISTORY) is True
    latest = store.load_archive(task_id=T)
    assert latest is not None and latest.run_id == "run-2"
    assert [a.run_id for a in store.list_archives(T)] == ["run-1", "run-2"]
    assert store.load_archive("missing") is None
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE archives SET history = :h WHERE run_id = 'run-1'"), {"h": HISTORY + " "}
        )
    tampered = store.load_archive("run-1")
    assert tampered is not None and not tampered.intact


@pytest.mark.parametrize(
    ("reason", "history"), [("deleted", HISTORY), ("closed", "{not json"), ("closed", '{"x": 1}')]
)
def test_archive_refuses_bad_input(store: EventStore, reason: str, history: str) -> None:
    with pytest.raises(ValueError):
        store.archive_history(T, "wf", "run-x", reason, history)
    assert store.load_archive("run-x") is None


# --- listing and bulk verification ----------------------------------------------------------


def test_task_ids_and_iter_all_events(store: EventStore) -> None:
    for task_id in ("b", "a", "c"):
        store.append(task_id, batch(task_id, 1, 3))
    assert store.task_ids() == ["a", "b", "c"]
    streamed = [(e.task_id, e.seq) for e in store.iter_all_events(batch=2)]
    assert streamed == [(t, s) for t in "abc" for s in (1, 2, 3)]


def test_verify_all_fast_screen_passes_clean_rows_without_fallback(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        store.append(f"T{i}", varied_events(f"T{i}"))
    fallbacks: list[str] = []
    real = _StoreAudit.verify

    def counting(self: _StoreAudit, task_id: str, head: tuple[int, str] | None = None) -> Any:
        fallbacks.append(task_id)
        return real(self, task_id, head)

    monkeypatch.setattr(_StoreAudit, "verify", counting)
    report = verify_store(store, batch=7)
    assert report.ok and (report.tasks, report.events) == (5, 100)
    assert fallbacks == []


def test_non_utc_offsets_verify_through_the_exact_path(store: EventStore) -> None:
    events = batch(T, 1, 3)
    events[1]["at"] = "2026-11-05T18:00:00.5+08:00"
    store.append(T, events)
    assert store.load(T)[1].occurred_at == dt.datetime(2026, 11, 5, 10, 0, 0, 500000, tzinfo=UTC)
    assert verify_task_chain(store, T).ok and verify_store(store).ok


def test_verify_all_with_checkpoints_and_workers(store: EventStore) -> None:
    heads: dict[str, tuple[int, str]] = {}
    for i in range(6):
        task_id = f"W{i}"
        result = store.append(task_id, batch(task_id, 1, 10))
        heads[task_id] = (result.head_seq, result.head_hash)
    assert verify_store(store, checkpoints=heads, workers=2).ok
    with store.engine.begin() as conn:
        conn.execute(sa.delete(events_t).where(events_t.c.task_id == "W5", events_t.c.seq >= 9))
        conn.execute(sa.delete(events_t).where(events_t.c.task_id == "W0"))
        conn.execute(
            sa.update(events_t)
            .where(events_t.c.task_id == "W3", events_t.c.seq == 4)
            .values(actor="x")
        )
    for workers in (1, 2):
        report = verify_store(store, checkpoints=heads, workers=workers)
        found = {t: (v.first_bad_seq, v.reason) for t, v in report.failures}
        assert found == {
            "W0": (1, "truncated: store ends at seq 0, checkpoint says 10"),
            "W3": (4, "column actor='x' disagrees with payload 'unit:乡镇A'"),
            "W5": (9, "truncated: store ends at seq 8, checkpoint says 10"),
        }, workers
    assert not verify_store(store).ok  # W3 is bad even without checkpoints


# --- the tamper mutation test ---------------------------------------------------------------
#
# Every single-field edit of every stored event, every deletion, every swap of two events and
# every cut-off tail must be detected, at the right seq, by `verify` and by `verify_all`.


class Tamperer:
    def __init__(self, store: EventStore, task_id: str) -> None:
        self.store = store
        self.task_id = task_id
        with store.engine.connect() as conn:
            self.rows = [
                dict(r)
                for r in conn.execute(
                    sa.select(events_t, sa.cast(events_t.c.payload, sa.Text).label("raw"))
                    .where(events_t.c.task_id == task_id)
                    .order_by(events_t.c.seq)
                ).mappings()
            ]
        self.head = (self.rows[-1]["seq"], self.rows[-1]["hash"])
        self.checked = 0

    def set(self, row_id: int, **values: Any) -> None:
        payload = values.pop("payload", None)
        stmt = sa.update(events_t).where(events_t.c.id == row_id)
        params: dict[str, Any] = {}
        if payload is not None:
            stmt = stmt.values(payload=self.store._payload_param)
            params["payload_text"] = payload
        if values:
            stmt = stmt.values(**values)
        with self.store.engine.begin() as conn:
            conn.execute(stmt, params) if params else conn.execute(stmt)

    def restore(self, row: dict[str, Any]) -> None:
        columns = {k: v for k, v in row.items() if k not in ("id", "raw", "payload")}
        self.set(row["id"], payload=row["raw"], **columns)

    def delete(self, row: dict[str, Any]) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(sa.delete(events_t).where(events_t.c.id == row["id"]))

    def reinsert(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k not in ("raw", "payload")}
        with self.store.engine.begin() as conn:
            conn.execute(
                events_t.insert().values(payload=self.store._payload_param),
                {**values, "payload_text": row["raw"]},
            )

    def expect(self, seq: int, what: str, *, head: bool = True) -> None:
        expected_head = self.head if head else None
        verdict = verify_task_chain(self.store, self.task_id, expected_head)
        assert not verdict.ok, f"{what}: not detected"
        assert verdict.first_bad_seq == seq, f"{what}: {verdict}"
        # The bulk audit (fast screen on SQLite, streaming walk on PostgreSQL) agrees.
        checkpoints = {self.task_id: self.head} if head else {}
        report = dict(verify_store(self.store, checkpoints=checkpoints).failures)
        assert report.get(self.task_id) == verdict, f"{what}: verify_all disagrees"
        self.checked += 1

    def expect_clean(self) -> None:
        assert verify_task_chain(self.store, self.task_id, self.head).ok
        assert verify_store(self.store, checkpoints={self.task_id: self.head}).ok


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if value < 2**53 - 1 else value - 1
    if isinstance(value, str):
        return value + "·"
    if value is None:
        return "x"
    if isinstance(value, list):
        return [*value, 0]
    return {**value, "x": 0}


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path inside an event: top-level keys, and every nested member and element."""
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    else:
        return []
    out = []
    for key, child in children:
        out.append((*path, key))
        out.extend(_leaf_paths(child, (*path, key)))
    return out


def _edit(event: Any, path: tuple[Any, ...]) -> Any:
    copy = json.loads(json.dumps(event))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _changed(target[path[-1]])
    return copy


def test_every_single_tamper_is_detected_at_its_seq(store: EventStore) -> None:
    store.append(T, varied_events()[:7])
    store.append(T, varied_events())  # stored over two appends, like a real task
    store.append("neighbour", batch("neighbour", 1, 3))
    tamper = Tamperer(store, T)
    tamper.expect_clean()
    rows = tamper.rows
    n = len(rows)
    assert n == 20

    for row in rows:
        k = row["seq"]
        event = json.loads(row["raw"])
        # Each column (id and recorded_at are storage bookkeeping, outside the evidence).
        column_edits: dict[str, Any] = {
            "task_id": T + "·",
            "seq": 1000 + k,
            "type": row["type"] + "·",
            "occurred_at": row["occurred_at"] + dt.timedelta(microseconds=1),
            "actor": row["actor"] + "·",
            "schema_version": row["schema_version"] + 1,
            "prev_hash": row["prev_hash"][:-1] + ("0" if row["prev_hash"][-1] != "0" else "1"),
            "hash": row["hash"][:-1] + ("0" if row["hash"][-1] != "0" else "1"),
        }
        for column, value in column_edits.items():
            tamper.set(row["id"], **{column: value})
            tamper.expect(k, f"column {column} of seq {k}")
            tamper.restore(row)
        tamper.set(row["id"], occurred_at=row["occurred_at"] + dt.timedelta(days=1))
        tamper.expect(k, f"occurred_at by a day at seq {k}", head=False)
        tamper.restore(row)

        # Each payload member, at any depth; removing each top-level key; adding one.
        payload_edits = {f"edit {p}": _edit(event, p) for p in _leaf_paths(event)}
        payload_edits |= {
            f"drop {key}": {x: y for x, y in event.items() if x != key} for key in event
        }
        payload_edits["add key"] = {**event, "extra": 1}
        for what, edited in payload_edits.items():
            tamper.set(row["id"], payload=canonical_json(edited).decode())
            tamper.expect(k, f"payload {what} of seq {k}", head=False)
            tamper.restore(row)

        # A harmless re-serialisation of the same payload is not tampering.
        tamper.set(row["id"], payload=json.dumps(event, indent=1, ensure_ascii=True))
        tamper.expect_clean()
        tamper.restore(row)

        # Deletion (the last one is a cut-off tail: found against the checkpoint).
        tamper.delete(row)
        tamper.expect(k, f"deletion of seq {k}")
        tamper.reinsert(row)

    # Every swap of two events' contents (positions kept), and of their payloads only.
    content = ["type", "occurred_at", "actor", "schema_version", "prev_hash", "hash"]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = rows[i], rows[j]
            tamper.set(a["id"], payload=b["raw"], **{c: b[c] for c in content})
            tamper.set(b["id"], payload=a["raw"], **{c: a[c] for c in content})
            tamper.expect(i + 1, f"swap of events {i + 1} and {j + 1}", head=False)
            tamper.restore(a)
            tamper.restore(b)
            tamper.set(a["id"], payload=b["raw"])
            tamper.set(b["id"], payload=a["raw"])
            tamper.expect(i + 1, f"payload swap of events {i + 1} and {j + 1}", head=False)
            tamper.restore(a)
            tamper.restore(b)

    # Every cut-off tail.
    for keep in range(n - 1, -1, -1):
        tamper.delete(rows[keep])
        verdict = verify_task_chain(store, T, tamper.head)
        assert not verdict.ok and verdict.first_bad_seq == keep + 1
        assert verdict.reason == f"truncated: store ends at seq {keep}, checkpoint says {n}"
        assert dict(verify_store(store, checkpoints={T: tamper.head}).failures)[T] == verdict
    for row in rows:
        tamper.reinsert(row)
    tamper.expect_clean()
    assert verify_task_chain(store, "neighbour").ok
    assert tamper.checked > 20 * 20
