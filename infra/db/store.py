"""The event store: append-only, hash-chained events per task, plus read models, at-most-once
notices/outbox, and archived engine histories. SQLite and PostgreSQL.

Appends are idempotent (an activity retried after a crash re-sends what was already
committed) and each is one transaction under a per-task lock, so the chain cannot fork.
Payloads are stored as their canonical JSON text, which lets the auditor's bulk verification
hash the stored bytes directly (see `verify_all`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    Engine,
    Table,
    Text,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from domain.canonical import CanonicalError, canonical_json
from domain.hashchain import (
    event_hash_canonical,
    genesis_hash,
)
from infra.db.engine import configure_sqlite, make_engine, write_options
from infra.db.models import (
    ArchiveRow,
    EventRow,
    FindingRow,
    InspectionRow,
    NoticeRow,
    OutboxRow,
    TaskRow,
    UTCDateTime,
    utcnow,
)

__all__ = [
    "ARCHIVE_REASONS",
    "AppendResult",
    "ArchiveConflictError",
    "ArchiveRecord",
    "ConflictError",
    "EventStore",
    "GapError",
    "Head",
    "NOTICE_NUMBER_SLOT",
    "ReadModel",
    "StoreError",
    "StoredEvent",
    "notice_number_label",
]

events_t = cast(Table, EventRow.__table__)
tasks_t = cast(Table, TaskRow.__table__)
inspections_t = cast(Table, InspectionRow.__table__)
findings_t = cast(Table, FindingRow.__table__)
notices_t = cast(Table, NoticeRow.__table__)
outbox_t = cast(Table, OutboxRow.__table__)
archives_t = cast(Table, ArchiveRow.__table__)

ARCHIVE_REASONS = frozenset({"closed", "continued_as_new", "manual"})

# pg_advisory_xact_lock(class, hashtext(task_id)): the class keeps our keys apart from other
# users of advisory locks ("DUBA").
_PG_LOCK_CLASS = 0x44554241
# ... and (class, hashtext(plan + year)) for numbering 督办单 ("DUBN").
_PG_NUMBER_LOCK_CLASS = 0x4455424E
# A writer that loses a number to another starts over; with the lock this is a rare event.
_NUMBER_ATTEMPTS = 10

# In a 督办单's document, where its number goes once the store has assigned it.
NOTICE_NUMBER_SLOT = "〔编号〕"


def notice_number_label(year: int, number: int) -> str:
    """A 督办单's number as it is printed and cited: 〔2026〕第15号."""
    return f"〔{year}〕第{number}号"

_HEADER_TYPES: dict[str, type] = {
    "task_id": str,
    "seq": int,
    "type": str,
    "at": str,
    "actor": str,
    "v": int,
}
_MAX_LEN = {"task_id": 200, "type": 100, "actor": 200}


# --- errors and results ------------------------------------------------------------------


class StoreError(Exception):
    """Base of the store's refusals; nothing was written when one is raised."""


class ConflictError(StoreError):
    """An event for an existing seq differs from the stored one (the record is immutable)."""

    def __init__(self, seq: int, detail: str = "") -> None:
        self.seq = seq
        super().__init__(f"seq {seq} is already stored with a different payload{detail}")


class GapError(StoreError):
    """The first new event does not follow the stored head (or the batch skips a seq)."""

    def __init__(self, expected: int, got: int) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"sequence gap: expected seq {expected}, got {got}")


class ArchiveConflictError(StoreError):
    """A different history is already archived for this run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} is already archived with different content")


class Head(NamedTuple):
    """The last stored (seq, hash) of a task; (0, genesis hash) when it has no events."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    skipped: int
    head_seq: int
    head_hash: str
    read_model_applied: bool = False


@dataclass(slots=True)
class ReadModel:
    """Projection rows of one task: `task` has the `tasks` columns; inspections and findings
    replace the task's current sets, or with `partial` are only the rows to insert or update
    (the task's other rows stay)."""

    task: dict[str, Any]
    inspections: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    partial: bool = False


@dataclass(frozen=True, slots=True)
class StoredEvent:
    task_id: str
    seq: int
    event: dict[str, Any]
    prev_hash: str
    hash: str
    occurred_at: dt.datetime
    type: str
    actor: str
    schema_version: int


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    id: int
    task_id: str
    workflow_id: str
    run_id: str
    reason: str
    history: str
    sha256: str
    event_count: int
    archived_at: dt.datetime
    intact: bool  # sha256 of `history` still equals the stored digest


@dataclass(frozen=True, slots=True)
class _Prepared:
    seq: int
    event: Mapping[str, Any]
    canonical: bytes
    occurred_at: dt.datetime


# --- the store ---------------------------------------------------------------------------


class EventStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._pg = engine.dialect.name == "postgresql"
        if self._sqlite:
            configure_sqlite(engine)
        # The payload is bound as text, so the column holds exactly the canonical bytes that
        # were hashed, not a driver's re-serialisation. PostgreSQL needs an explicit cast to
        # json (which keeps the text verbatim); SQLite must not get one: CAST(x AS JSON) has
        # NUMERIC affinity there and would turn the text into 0.
        param = bindparam("payload_text", type_=Text)
        self._payload_param: Any = param if self._sqlite else sql_cast(param, JSON)

    # -- transactions --

    @contextmanager
    def _write(self, task_id: str | None = None) -> Iterator[Connection]:
        """A write transaction: BEGIN IMMEDIATE on SQLite (one writer at a time, taken up
        front); on PostgreSQL a transaction-scoped advisory lock on the task, so appends to
        one task are serialised and appends to different tasks run in parallel."""
        with self.engine.connect() as conn:
            conn.execution_options(**write_options())
            with conn.begin():
                if task_id is not None and self._pg:
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:cls, hashtext(:tid))"),
                        {"cls": _PG_LOCK_CLASS, "tid": task_id},
                    )
                yield conn

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    # -- append --

    def append(
        self,
        task_id: str,
        events: Sequence[Mapping[str, Any]],
        read_model: ReadModel | None = None,
    ) -> AppendResult:
        """Append a task's events (seq-contiguous) and apply its read model, in one transaction.

        Events already stored with identical canonical bytes are skipped, so re-sending a
        committed batch (with or without new events after it) is harmless. The read model is
        applied only if it describes the resulting head (`task["last_seq"]`), so a late retry
        never overwrites a newer projection; a `partial` one upserts just the rows it carries
        (the rows the batch's events changed), so re-applying it is harmless too. Raises ConflictError, GapError or ValueError and
        then writes nothing."""
        prepared = _prepare(task_id, events)
        if read_model is not None:
            _check_read_model(task_id, read_model)
        try:
            return self._append_once(task_id, prepared, read_model)
        except IntegrityError:
            # Last line of defence: someone inserted the same seq between our head read and
            # our insert (e.g. a writer that bypassed the lock). Re-check idempotently, once.
            return self._append_once(task_id, prepared, read_model)

    def _append_once(
        self, task_id: str, prepared: list[_Prepared], read_model: ReadModel | None
    ) -> AppendResult:
        with self._write(task_id) as conn:
            head = self._read_head(conn, task_id)
            old = [p for p in prepared if p.seq <= head.seq]
            new = [p for p in prepared if p.seq > head.seq]
            if old:
                self._check_same(conn, task_id, old)
            if new and new[0].seq != head.seq + 1:
                raise GapError(head.seq + 1, new[0].seq)
            rows, prev = [], head.hash
            recorded = utcnow()
            for p in new:
                current = event_hash_canonical(prev, p.canonical)
                rows.append(
                    {
                        "task_id": task_id,
                        "seq": p.seq,
                        "type": p.event["type"],
                        "occurred_at": p.occurred_at,
                        "actor": p.event["actor"],
                        "payload_text": p.canonical.decode("utf-8"),
                        "schema_version": p.event["v"],
                        "prev_hash": prev,
                        "hash": current,
                        "recorded_at": recorded,
                    }
                )
                prev = current
            if rows:
                conn.execute(events_t.insert().values(payload=self._payload_param), rows)
            head_seq = new[-1].seq if new else head.seq
            applied = False
            if read_model is not None:
                rm_last = int(read_model.task["last_seq"])
                if rm_last > head_seq:
                    raise ValueError(
                        f"read model is at seq {rm_last} but the store's head is {head_seq}"
                    )
                if rm_last == head_seq:
                    self._apply_read_model(conn, task_id, read_model)
                    applied = True
            return AppendResult(len(new), len(old), head_seq, prev, applied)

    def _read_head(self, conn: Connection, task_id: str) -> Head:
        row = conn.execute(
            select(events_t.c.seq, events_t.c.hash)
            .where(events_t.c.task_id == task_id)
            .order_by(events_t.c.seq.desc())
            .limit(1)
        ).first()
        return Head(row.seq, row.hash) if row else Head(0, genesis_hash(task_id))

    def _check_same(self, conn: Connection, task_id: str, old: list[_Prepared]) -> None:
        stored: dict[int, str] = dict(
            conn.execute(
                select(events_t.c.seq, sql_cast(events_t.c.payload, Text)).where(
                    events_t.c.task_id == task_id,
                    events_t.c.seq.between(old[0].seq, old[-1].seq),
                )
            ).all()
        )
        for p in old:
            raw = stored.get(p.seq)
            if raw is None or not _same_payload(raw, p.canonical):
                raise ConflictError(p.seq)

    # -- read models --

    def _apply_read_model(self, conn: Connection, task_id: str, rm: ReadModel) -> None:
        task = _normalise(tasks_t, rm.task, task_id)
        self._upsert(conn, tasks_t, [task], ["task_id"])
        for table, rows, key in (
            (inspections_t, rm.inspections, "inspection_id"),
            (findings_t, rm.findings, "finding_id"),
        ):
            normalised = [_normalise(table, row, task_id) for row in rows]
            if normalised:
                self._upsert(conn, table, normalised, [key, "task_id"])
            if rm.partial:
                continue
            keep = [row[key] for row in normalised]
            conn.execute(delete(table).where(table.c.task_id == task_id, table.c[key].not_in(keep)))

    def _upsert(
        self, conn: Connection, table: Table, rows: list[dict[str, Any]], keys: list[str]
    ) -> None:
        stmt = self._insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        )
        conn.execute(stmt, rows)

    def replace_read_models(self, task_id: str, read_model: ReadModel) -> None:
        """Overwrite a task's read models unconditionally (rebuilds from the event record)."""
        _check_read_model(task_id, read_model)
        with self._write(task_id) as conn:
            self._apply_read_model(conn, task_id, read_model)

    def read_model_rows(self, task_id: str, *, include_updated_at: bool = False) -> dict[str, Any]:
        """{"task": row | None, "inspections": [...], "findings": [...]} as plain dicts, sorted,
        for comparing a live projection with a rebuilt one (`updated_at`, the wall-clock time
        of the write, is left out unless asked for)."""
        with self.engine.connect() as conn:
            task = conn.execute(select(tasks_t).where(tasks_t.c.task_id == task_id)).mappings()
            task_row = next(iter(task), None)
            task_dict = dict(task_row) if task_row is not None else None
            if task_dict is not None and not include_updated_at:
                task_dict.pop("updated_at", None)
            inspections = conn.execute(
                select(inspections_t)
                .where(inspections_t.c.task_id == task_id)
                .order_by(inspections_t.c.inspection_id)
            ).mappings()
            findings = conn.execute(
                select(findings_t)
                .where(findings_t.c.task_id == task_id)
                .order_by(findings_t.c.finding_id)
            ).mappings()
            return {
                "task": task_dict,
                "inspections": [dict(r) for r in inspections],
                "findings": [dict(r) for r in findings],
            }

    # -- reading events --

    _event_cols = EVENT_COLUMNS = (
        events_t.c.task_id,
        events_t.c.seq,
        sql_cast(events_t.c.payload, Text).label("raw"),
        events_t.c.prev_hash,
        events_t.c.hash,
        events_t.c.occurred_at,
        events_t.c.type,
        events_t.c.actor,
        events_t.c.schema_version,
    )

    def load(self, task_id: str) -> list[StoredEvent]:
        """A task's events in seq order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*self._event_cols)
                .where(events_t.c.task_id == task_id)
                .order_by(events_t.c.seq)
            )
            return [_stored(row) for row in rows]

    def head(self, task_id: str) -> Head:
        with self.engine.connect() as conn:
            return self._read_head(conn, task_id)

    def task_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(events_t.c.task_id).distinct().order_by(events_t.c.task_id)
                ).scalars()
            )

    def iter_all_events(self, batch: int = 1000) -> Iterator[StoredEvent]:
        """Every stored event, by task then seq, streamed `batch` rows at a time."""
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(
                select(*self._event_cols).order_by(events_t.c.task_id, events_t.c.seq)
            )
            for row in result:
                yield _stored(row)

    # -- notices and outbox (at-most-once side effects) --

    def record_notice(
        self,
        task_id: str,
        step_key: str,
        *,
        ladder: str,
        step: str,
        level: int,
        title: str,
        document: str,
        node: str | None = None,
        reply_by: dt.datetime | None = None,
        plan_code: str | None = None,
        year: int | None = None,
        numbered: bool = False,
    ) -> bool:
        """Record a 督办单 for (task, step) unless one exists; True if this call created it.

        With `numbered` (a 督办单, not a reminder) the new row gets the next number of its plan
        and year, 〔year〕第n号, in the same transaction, and NOTICE_NUMBER_SLOT in `document`
        becomes that label. A notice recorded before keeps its row and number whatever this
        call says. Two writers of one plan and year are serialised (BEGIN IMMEDIATE on SQLite,
        an advisory lock on PostgreSQL); the unique (plan, year, number) is the last line of
        defence, and a writer that loses on it starts over with a fresh count."""
        if numbered and (plan_code is None or year is None):
            raise ValueError("a numbered notice needs its plan_code and year")
        row = {
            "task_id": task_id,
            "step_key": step_key,
            "node": node,
            "ladder": ladder,
            "step": step,
            "level": level,
            "title": title,
            "document": document,
            "reply_by": reply_by,
            "created_at": utcnow(),
            "plan_code": plan_code,
            "year": year,
            "number": None,
        }
        for attempt in range(_NUMBER_ATTEMPTS):
            try:
                return self._record_notice_once(row, numbered)
            except IntegrityError:
                # Another writer took this number between our count and our insert.
                if attempt == _NUMBER_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _record_notice_once(self, row: dict[str, Any], numbered: bool) -> bool:
        c = notices_t.c
        with self._write() as conn:
            existing = conn.execute(
                select(c.id).where(c.task_id == row["task_id"], c.step_key == row["step_key"])
            ).first()
            if existing is not None:
                return False
            if numbered:
                number = self._next_number(conn, row["plan_code"], row["year"])
                row = {**row, "number": number, "document": row["document"].replace(
                    NOTICE_NUMBER_SLOT, notice_number_label(row["year"], number))}
            stmt = (
                self._insert(notices_t)
                .values(row)
                .on_conflict_do_nothing(index_elements=["task_id", "step_key"])
                .returning(c.id)
            )
            return conn.execute(stmt).first() is not None

    def _next_number(self, conn: Connection, plan_code: str, year: int) -> int:
        """The next 督办单 number of a plan's year. On PostgreSQL the numbering of one plan's
        year is serialised by an advisory lock held to the end of the transaction (SQLite's
        writers already are serialised): a second writer counts after the first commits."""
        if self._pg:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:cls, hashtext(:key))"),
                {"cls": _PG_NUMBER_LOCK_CLASS, "key": f"{plan_code}\x1f{year}"},
            )
        c = notices_t.c
        last = conn.execute(
            select(func.max(c.number)).where(c.plan_code == plan_code, c.year == year)
        ).scalar()
        return int(last or 0) + 1

    def notice(self, task_id: str, step_key: str) -> dict[str, Any] | None:
        """The notice row of (task, step), or None."""
        stmt = select(notices_t).where(
            notices_t.c.task_id == task_id, notices_t.c.step_key == step_key)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
            return dict(row) if row is not None else None

    def notice_by_id(self, notice_id: int) -> dict[str, Any] | None:
        """The notice row with this id, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(notices_t).where(notices_t.c.id == notice_id)).mappings().first()
            return dict(row) if row is not None else None

    def add_outbox(
        self,
        task_id: str,
        step_key: str,
        channel: str,
        recipient: str,
        subject: str,
        body: Mapping[str, Any],
    ) -> bool:
        """Queue a message for (task, step, channel, recipient) unless queued before; True if
        this call queued it (only then may the caller send it)."""
        row = {
            "task_id": task_id,
            "step_key": step_key,
            "channel": channel,
            "recipient": recipient,
            "subject": subject,
            "body": dict(body),
            "created_at": utcnow(),
        }
        return self._insert_if_absent(
            outbox_t, row, ["task_id", "step_key", "channel", "recipient"]
        )

    def _insert_if_absent(self, table: Table, row: dict[str, Any], keys: list[str]) -> bool:
        # RETURNING rather than rowcount: drivers disagree on rowcount for ON CONFLICT inserts.
        stmt = (
            self._insert(table)
            .values(row)
            .on_conflict_do_nothing(index_elements=keys)
            .returning(table.c.id)
        )
        with self._write() as conn:
            return conn.execute(stmt).first() is not None

    def list_notices(self, task_id: str | None = None) -> list[dict[str, Any]]:
        stmt = select(notices_t).order_by(notices_t.c.id)
        if task_id is not None:
            stmt = stmt.where(notices_t.c.task_id == task_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def note_notice_reply(self, task_id: str, step_key: str, *,
                          signed_at: dt.datetime | None = None, signed_by: str | None = None,
                          reply_missed_at: dt.datetime | None = None) -> bool:
        """Mark a notice signed for (签收) or as having missed its 反馈时限, as its events say;
        idempotent (a retried batch writes the same values). False if there is no such notice
        (one fired before notices were recorded)."""
        values: dict[str, Any] = {}
        if signed_at is not None:
            values |= {"signed_at": signed_at, "signed_by": signed_by}
        if reply_missed_at is not None:
            values["reply_missed_at"] = reply_missed_at
        if not values:
            return False
        stmt = (update(notices_t)
                .where(notices_t.c.task_id == task_id, notices_t.c.step_key == step_key)
                .values(**values))
        with self._write(task_id) as conn:
            return bool(conn.execute(stmt).rowcount)

    def list_outbox(self, undelivered_only: bool = True) -> list[dict[str, Any]]:
        stmt = select(outbox_t).order_by(outbox_t.c.id)
        if undelivered_only:
            stmt = stmt.where(outbox_t.c.delivered_at.is_(None))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def mark_delivered(self, outbox_id: int, at: dt.datetime | None = None) -> bool:
        """Mark a message delivered; True if it was undelivered until now."""
        stmt = (
            update(outbox_t)
            .where(outbox_t.c.id == outbox_id, outbox_t.c.delivered_at.is_(None))
            .values(delivered_at=at or utcnow())
        )
        with self._write() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- archived engine histories --

    def archive_history(
        self, task_id: str, workflow_id: str, run_id: str, reason: str, history_json: str
    ) -> bool:
        """Keep a run's engine history (exact JSON text). True if stored by this call; False if
        this run is already archived with the same content; ArchiveConflictError otherwise."""
        if reason not in ARCHIVE_REASONS:
            raise ValueError(f"reason must be one of {sorted(ARCHIVE_REASONS)}, not {reason!r}")
        try:
            parsed = json.loads(history_json)
        except ValueError as exc:
            raise ValueError(f"history is not valid JSON: {exc}") from exc
        events = parsed.get("events") if isinstance(parsed, dict) else parsed
        if not isinstance(events, list):
            raise ValueError("history must be a JSON list of events or an object with 'events'")
        digest = hashlib.sha256(history_json.encode("utf-8")).hexdigest()
        row = {
            "task_id": task_id,
            "workflow_id": workflow_id,
            "run_id": run_id,
            "reason": reason,
            "history": history_json,
            "sha256": digest,
            "event_count": len(events),
            "archived_at": utcnow(),
        }
        if self._insert_if_absent(archives_t, row, ["run_id"]):
            return True
        existing = self.load_archive(run_id)
        if existing is None:  # pragma: no cover - deleted between the two statements
            raise ArchiveConflictError(run_id)
        # A retried archiver may fetch the same history and format it differently.
        if existing.sha256 == digest or json.loads(existing.history) == parsed:
            return False
        raise ArchiveConflictError(run_id)

    def supersede_archive(self, run_id: str, history_json: str) -> bool:
        """Replace a run's archive by a longer history of the same run (e.g. the complete one,
        fetched after the run closed, for one archived by its own last activity). Only if the
        stored archive is intact and its events are exactly the first events of the new one;
        ArchiveConflictError otherwise, and nothing changes. True if replaced."""
        existing = self.load_archive(run_id)
        if existing is None:
            raise ValueError(f"run {run_id} has no archive to supersede")
        parsed = json.loads(history_json)
        new_events = parsed.get("events") if isinstance(parsed, dict) else parsed
        old = json.loads(existing.history)
        old_events = old.get("events") if isinstance(old, dict) else old
        if (
            not existing.intact
            or not isinstance(new_events, list)
            or not isinstance(old_events, list)
            or len(new_events) <= len(old_events)
            or new_events[: len(old_events)] != old_events
        ):
            raise ArchiveConflictError(run_id)
        stmt = (
            update(archives_t)
            .where(archives_t.c.run_id == run_id, archives_t.c.sha256 == existing.sha256)
            .values(
                history=history_json,
                sha256=hashlib.sha256(history_json.encode("utf-8")).hexdigest(),
                event_count=len(new_events),
                archived_at=utcnow(),
            )
        )
        with self._write() as conn:
            if conn.execute(stmt).rowcount != 1:  # replaced concurrently: look again
                raise ArchiveConflictError(run_id)
        return True

    def load_archive(
        self, run_id: str | None = None, *, task_id: str | None = None
    ) -> ArchiveRecord | None:
        """The archive of `run_id`, or else the latest archive of `task_id`."""
        if (run_id is None) == (task_id is None):
            raise ValueError("give exactly one of run_id or task_id")
        stmt = select(archives_t)
        if run_id is not None:
            stmt = stmt.where(archives_t.c.run_id == run_id)
        else:
            stmt = stmt.where(archives_t.c.task_id == task_id).order_by(archives_t.c.id.desc())
        with self.engine.connect() as conn:
            row = conn.execute(stmt.limit(1)).mappings().first()
        return _archive(row) if row is not None else None

    def list_archives(self, task_id: str) -> list[ArchiveRecord]:
        """All archived runs of a task, oldest first (a task continued-as-new has several)."""
        stmt = select(archives_t).where(archives_t.c.task_id == task_id).order_by(archives_t.c.id)
        with self.engine.connect() as conn:
            return [_archive(r) for r in conn.execute(stmt).mappings()]


# --- helpers ---------------------------------------------------------------------------------


def _prepare(task_id: str, events: Sequence[Mapping[str, Any]]) -> list[_Prepared]:
    """Validate a batch before touching the database: header fields present and typed, one
    task, contiguous seqs, canonicalisable (no floats)."""
    prepared: list[_Prepared] = []
    for index, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise ValueError(f"event #{index} is a {type(event).__name__}, not a dict")
        for key, kind in _HEADER_TYPES.items():
            value = event.get(key)
            if type(value) is not kind:
                raise ValueError(f"event #{index}: {key!r} must be {kind.__name__}, got {value!r}")
        for key, limit in _MAX_LEN.items():
            if len(event[key]) > limit:
                raise ValueError(f"event #{index}: {key!r} is longer than {limit} characters")
        if event["task_id"] != task_id:
            raise ValueError(f"event #{index} belongs to {event['task_id']!r}, not {task_id!r}")
        seq = event["seq"]
        if seq < 1:
            raise ValueError(f"event #{index}: seq must be >= 1, got {seq}")
        if prepared and seq != prepared[-1].seq + 1:
            raise GapError(prepared[-1].seq + 1, seq)
        try:
            occurred_at = dt.datetime.fromisoformat(event["at"])
        except ValueError as exc:
            raise ValueError(f"event #{index}: 'at' is not ISO-8601: {event['at']!r}") from exc
        if occurred_at.utcoffset() is None:
            raise ValueError(f"event #{index}: 'at' has no time zone: {event['at']!r}")
        try:
            canonical = canonical_json(event)
        except CanonicalError as exc:
            raise CanonicalError(f"event seq {seq}: {exc}") from exc
        prepared.append(_Prepared(seq, event, canonical, occurred_at.astimezone(dt.UTC)))
    return prepared


def _same_payload(stored_text: str, canonical: bytes) -> bool:
    if stored_text.encode("utf-8") == canonical:
        return True
    try:  # stored text reformatted (another writer or backend): compare canonical forms
        return canonical_json(json.loads(stored_text)) == canonical
    except ValueError:
        return False


def _check_read_model(task_id: str, rm: ReadModel) -> None:
    if rm.task.get("task_id") != task_id:
        raise ValueError(f"read model is for {rm.task.get('task_id')!r}, not {task_id!r}")
    if not isinstance(rm.task.get("last_seq"), int):
        raise ValueError("read model task needs an integer 'last_seq'")


def _normalise(table: Table, row: Mapping[str, Any], task_id: str) -> dict[str, Any]:
    """A full row for `table`: unknown keys refused, missing ones defaulted or None, and
    task_id forced to the task being written (a read model cannot touch another task)."""
    unknown = set(row) - set(table.c.keys())
    if unknown:
        raise ValueError(f"unknown {table.name} fields: {sorted(unknown)}")
    if row.get("task_id", task_id) != task_id:
        raise ValueError(f"{table.name} row belongs to {row['task_id']!r}, not {task_id!r}")
    out: dict[str, Any] = {}
    for column in table.columns:
        if column.name in row:
            value = row[column.name]
            if isinstance(column.type, UTCDateTime):
                # Convert now, so a naive time is a plain ValueError before any write.
                value = column.type.process_bind_param(value, None)  # type: ignore[arg-type]
            out[column.name] = value
        elif column.name == "task_id":
            out[column.name] = task_id
        elif column.default is not None and column.default.is_scalar:
            out[column.name] = column.default.arg  # type: ignore[attr-defined]
        elif column.default is not None and column.default.is_callable:
            out[column.name] = column.default.arg(None)  # type: ignore[attr-defined]
        elif column.nullable:
            out[column.name] = None
        elif isinstance(column.type, JSON):
            out[column.name] = []  # nodes, evidence: an absent list is an empty one
        else:
            raise ValueError(f"{table.name} row lacks required field {column.name!r}")
    return out


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(
        task_id=row.task_id,
        seq=row.seq,
        event=json.loads(row.raw),
        prev_hash=row.prev_hash,
        hash=row.hash,
        occurred_at=row.occurred_at,
        type=row.type,
        actor=row.actor,
        schema_version=row.schema_version,
    )


def _archive(row: Any) -> ArchiveRecord:
    return ArchiveRecord(
        id=row["id"],
        task_id=row["task_id"],
        workflow_id=row["workflow_id"],
        run_id=row["run_id"],
        reason=row["reason"],
        history=row["history"],
        sha256=row["sha256"],
        event_count=row["event_count"],
        archived_at=row["archived_at"],
        intact=hashlib.sha256(row["history"].encode("utf-8")).hexdigest() == row["sha256"],
    )


def open_store(url: str) -> EventStore:
    """The store at `url`, its schema created or upgraded first (idempotent)."""
    from infra.db.migrate import upgrade

    upgrade(url)
    return EventStore(make_engine(url))
