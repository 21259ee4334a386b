"""The auditor's check of the event store itself: every task's hash chain walked, and every
copied column compared with its payload, one task at a time or the whole store streamed in
constant memory (over several processes, with a fast SQLite screen).

Kept apart from the write path (`infra.db.store`): it only reads, and it is the auditor's tool.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from domain.hashchain import EVENT_DOMAIN, GENESIS_DOMAIN, ChainVerdict, ChainVerifier
from infra.db.engine import make_engine
from infra.db.store import (
    EventStore,
    archives_t,
    events_t,
    findings_t,
    inspections_t,
    notices_t,
    outbox_t,
    tasks_t,
)

# Where else than the events a task leaves rows: each would be written only after (or in the
# same transaction as) the task's events, so a task found there must have events too.
TASK_SOURCES = (
    (tasks_t, "the read model (tasks)"),
    (inspections_t, "the read model (inspections)"),
    (findings_t, "the read model (findings)"),
    (archives_t, "the archives"),
    (notices_t, "the notices"),
    (outbox_t, "the outbox"),
)


def verify_task_chain(
    store: EventStore, task_id: str, expected_head: tuple[int, str] | None = None
) -> ChainVerdict:
    """One task's chain and columns; a cut-off tail only against `expected_head` (seq, hash)."""
    return _StoreAudit(store).verify(task_id, expected_head)


def verify_store(
    store: EventStore,
    *,
    checkpoints: Mapping[str, tuple[int, str]] | None = None,
    workers: int = 1,
    batch: int = 5000,
    fast: bool | None = None,
) -> AuditReport:
    """Every task of the store (see `_StoreAudit.verify_all`)."""
    return _StoreAudit(store).verify_all(
        checkpoints=checkpoints, workers=workers, batch=batch, fast=fast
    )


def task_sources(store: EventStore, task_id: str | None = None) -> dict[str, list[str]]:
    """Every task the store knows of anywhere but its events (or only `task_id`): task id ->
    where it appears (read models, archives, notices, outbox), in `TASK_SOURCES` order."""
    found: dict[str, list[str]] = {}
    with store.engine.connect() as conn:
        for table, label in TASK_SOURCES:
            stmt = select(table.c.task_id).distinct()
            if task_id is not None:
                stmt = stmt.where(table.c.task_id == task_id)
            for (tid,) in conn.execute(stmt):
                found.setdefault(str(tid), []).append(label)
    return found


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Result of verifying every task: counts, and the verdict of each task that failed."""

    tasks: int
    events: int
    failures: list[tuple[str, ChainVerdict]]

    @property
    def ok(self) -> bool:
        return not self.failures


class _StoreAudit:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.engine = store.engine
        self._sqlite = store.engine.dialect.name == "sqlite"
        self._event_cols = EventStore.EVENT_COLUMNS

    def verify(self, task_id: str, expected_head: tuple[int, str] | None = None) -> ChainVerdict:
        """Verify one task: the hash chain (domain.hashchain rules) and that every copied
        column (type, occurred_at, actor, seq, schema_version) agrees with the payload, so
        that editing any single field of any stored event is detected at that event's seq.
        A cut-off tail is only detectable against `expected_head` (seq, hash)."""
        verifier = ChainVerifier(task_id, expected_head)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*self._event_cols)
                .where(events_t.c.task_id == task_id)
                .order_by(events_t.c.seq)
            )
            for row in rows:
                _feed_row(verifier, row)
                if verifier.failed:
                    break
        return verifier.verdict()

    def verify_all(
        self,
        *,
        checkpoints: Mapping[str, tuple[int, str]] | None = None,
        workers: int = 1,
        batch: int = 5000,
        fast: bool | None = None,
    ) -> AuditReport:
        """Verify every task, streaming in constant memory (plus the failures found).

        `checkpoints` maps task_id -> known head (seq, hash), to detect cut-off tails and tasks
        whose events were all deleted. `workers` > 1 splits the task_id range over processes.
        `fast` (default: on SQLite) screens rows in bulk: SQLite's JSON code compares the
        copied columns with the payload inside the query (as JSON text, so types count too),
        and the stored canonical bytes are hashed as they are, never parsed in Python. The
        screen checks what `verify` checks, only more strictly, so a row that passes it would
        pass `verify`; a task with any row that does not pass is re-verified by `verify`, so
        verdicts and reasons are always `verify`'s. Without the screen each row is parsed
        and checked in Python (PostgreSQL, or fast=False)."""
        cps = dict(checkpoints or {})
        use_fast = self._sqlite if fast is None else fast
        if use_fast and not self._sqlite:
            raise ValueError("the fast screen uses SQLite's JSON functions")
        ranges = self._split(workers) if workers > 1 else [(None, None)]
        if len(ranges) == 1:
            parts = [self._verify_range(None, None, cps, batch, use_fast)]
        else:
            url = self.engine.url.render_as_string(hide_password=False)
            ctx = multiprocessing.get_context(_start_method())
            with ProcessPoolExecutor(len(ranges), mp_context=ctx) as pool:
                futures = [
                    pool.submit(_verify_range_in_process, url, lo, hi, cps, batch, use_fast)
                    for lo, hi in ranges
                ]
                parts = [f.result() for f in futures]
        tasks = sum(p[0] for p in parts)
        events = sum(p[1] for p in parts)
        failures = [f for p in parts for f in p[2]]
        seen = set().union(*(p[3] for p in parts))
        for task_id in sorted(set(cps) - seen):  # checkpointed, but no events left at all
            failures.append((task_id, self.verify(task_id, cps[task_id])))
            tasks += 1
        failures.sort(key=lambda f: f[0])
        return AuditReport(tasks, events, failures)

    def _split(self, workers: int) -> list[tuple[str | None, str | None]]:
        """Task-id ranges holding about the same number of events; bounds are task ids, so a
        task is never split between workers."""
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(events_t)).scalar_one()
            bounds: list[str] = []
            for i in range(1, workers):
                bound = conn.execute(
                    select(events_t.c.task_id)
                    .order_by(events_t.c.task_id)
                    .offset(total * i // workers)
                    .limit(1)
                ).scalar()
                if bound is not None and (not bounds or bound > bounds[-1]):
                    bounds.append(bound)
        edges: list[str | None] = [None, *bounds, None]
        return list(zip(edges[:-1], edges[1:], strict=True))

    def _verify_range(
        self,
        lo: str | None,
        hi: str | None,
        checkpoints: Mapping[str, tuple[int, str]],
        batch: int,
        use_fast: bool,
    ) -> tuple[int, int, list[tuple[str, ChainVerdict]], set[str]]:
        walk = self._screen_range if use_fast else self._walk_range
        tasks = events = 0
        failures: list[tuple[str, ChainVerdict]] = []
        seen: set[str] = set()
        for task_id, n_events, verdict in walk(lo, hi, checkpoints, batch):
            tasks += 1
            events += n_events
            if task_id in checkpoints:
                seen.add(task_id)
            if verdict is not None and not verdict.ok:
                failures.append((task_id, verdict))
        return tasks, events, failures, seen

    def _range_where(self, lo: str | None, hi: str | None) -> list[Any]:
        where = []
        if lo is not None:
            where.append(events_t.c.task_id >= lo)
        if hi is not None:
            where.append(events_t.c.task_id < hi)
        return where

    def _walk_range(
        self,
        lo: str | None,
        hi: str | None,
        checkpoints: Mapping[str, tuple[int, str]],
        batch: int,
    ) -> Iterator[tuple[str, int, ChainVerdict | None]]:
        """Generic streaming verification (any backend): `verify`'s checks, row by row."""
        stmt = (
            select(*self._event_cols)
            .where(*self._range_where(lo, hi))
            .order_by(events_t.c.task_id, events_t.c.seq)
        )
        verifier: ChainVerifier | None = None
        count = 0
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            for row in result:
                if verifier is None or row.task_id != verifier.task_id:
                    if verifier is not None:
                        yield verifier.task_id, count, verifier.verdict()
                    verifier = ChainVerifier(row.task_id, checkpoints.get(row.task_id))
                    count = 0
                count += 1
                _feed_row(verifier, row)
        if verifier is not None:
            yield verifier.task_id, count, verifier.verdict()

    # The SQLite screen, one row per event. The payload's header fields are compared with the
    # copied columns by SQLite's C JSON code: one parse per row (a multi-path json_extract gives
    # a JSON array) against json_array() of the columns, so values and JSON types must match.
    # `at` must be the pydantic form of occurred_at ("...T...Z", microseconds only when
    # non-zero); another form only costs a fall-back to the exact check. A row that fails
    # comes back with a NULL hash, which can never match. task_id comes as bytes: compared per
    # row, decoded once per task.
    _SCREEN_SQL = """
        SELECT CAST(task_id AS BLOB), seq, CAST(payload AS BLOB), prev_hash,
               CASE WHEN json_extract(payload, '$.type', '$.actor', '$.seq', '$.v', '$.task_id',
                                      '$.at')
                       = json_array(type, actor, seq, schema_version, task_id,
                           replace(CASE WHEN substr(occurred_at, 20) = '.000000'
                                        THEN substr(occurred_at, 1, 19) ELSE occurred_at END,
                                   ' ', 'T') || 'Z')
                    THEN hash END
        FROM events
        WHERE task_id >= :lo {upper}
        ORDER BY task_id, seq
    """

    def _screen_range(
        self,
        lo: str | None,
        hi: str | None,
        checkpoints: Mapping[str, tuple[int, str]],
        batch: int,
    ) -> Iterator[tuple[str, int, ChainVerdict | None]]:
        """Fast path (SQLite). Yields (task_id, events, None) for a task that passed the screen,
        or `verify`'s verdict for one that did not. The loop is deliberately flat and uses
        only local variables: it runs once per stored event."""
        sql = self._SCREEN_SQL.format(upper="" if hi is None else "AND task_id < :hi")
        sha256 = hashlib.sha256
        event_domain, genesis_domain = EVENT_DOMAIN, GENESIS_DOMAIN
        current: str | None = None
        current_bin = b""
        suspect = False
        count = exp_seq = cp_seq = 0
        cp_hash = prev_hex = ""
        prev_bin = b""
        with self.engine.connect() as conn:
            # The driver's cursor, not SQLAlchemy's result: no per-row processing layers.
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, {"lo": lo or "", "hi": hi})
                while rows := cursor.fetchmany(batch):
                    for task_bin, seq, raw, prev, hash_ in rows:
                        if task_bin != current_bin or current is None:
                            if current is not None:
                                yield self._screened(current, count, suspect, exp_seq, checkpoints)
                            current_bin, current = task_bin, task_bin.decode("utf-8")
                            suspect, count, exp_seq = False, 0, 1
                            genesis = sha256(genesis_domain + task_bin)
                            prev_bin, prev_hex = genesis.digest(), genesis.hexdigest()
                            cp_seq, cp_hash = checkpoints.get(current, (0, ""))
                        count += 1
                        if suspect:
                            continue
                        digest = sha256(event_domain + prev_bin + raw)
                        if (
                            seq != exp_seq
                            or prev != prev_hex
                            or digest.hexdigest() != hash_
                            or (seq == cp_seq and hash_ != cp_hash)
                        ):
                            suspect = True
                            continue
                        prev_bin, prev_hex = digest.digest(), hash_
                        exp_seq += 1
                if current is not None:
                    yield self._screened(current, count, suspect, exp_seq, checkpoints)
            finally:
                cursor.close()

    def _screened(
        self,
        task_id: str,
        count: int,
        suspect: bool,
        next_seq: int,
        checkpoints: Mapping[str, tuple[int, str]],
    ) -> tuple[str, int, ChainVerdict | None]:
        checkpoint = checkpoints.get(task_id)
        if suspect or (checkpoint is not None and checkpoint[0] > next_seq - 1):
            return task_id, count, self.verify(task_id, checkpoint)
        return task_id, count, None


def _start_method() -> str:
    """fork when it is safe, spawn otherwise. A forked worker starts at once (a spawned one
    first spends ~1 s importing SQLAlchemy, a fifth of a million-event audit). fork is safe
    here when this process runs a single thread (no other thread can hold a lock the child
    would inherit) and because workers open their own connections and never touch inherited
    ones (they leave with os._exit, so nothing inherited is even closed)."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _verify_range_in_process(
    url: str,
    lo: str | None,
    hi: str | None,
    checkpoints: Mapping[str, tuple[int, str]],
    batch: int,
    use_fast: bool,
) -> tuple[int, int, list[tuple[str, ChainVerdict]], set[str]]:
    engine = make_engine(url)
    try:
        return _StoreAudit(EventStore(engine))._verify_range(lo, hi, checkpoints, batch, use_fast)
    finally:
        engine.dispose()


def _column_problem(event: Mapping[str, Any], row: Any) -> str | None:
    """Why the copied columns disagree with the payload, if they do."""
    for column, key in (("type", "type"), ("actor", "actor")):
        if getattr(row, column) != event.get(key):
            return f"column {column}={getattr(row, column)!r} disagrees with payload {event.get(key)!r}"
    version = event.get("v")
    if type(version) is not int or version != row.schema_version:
        return f"column schema_version={row.schema_version!r} disagrees with payload v={version!r}"
    try:
        at = dt.datetime.fromisoformat(event["at"])
    except (KeyError, TypeError, ValueError):
        return f"payload at={event.get('at')!r} is not an ISO-8601 time"
    if at.utcoffset() is None or at != row.occurred_at:
        return f"column occurred_at={row.occurred_at.isoformat()} disagrees with payload at={event['at']!r}"
    return None


def _feed_row(verifier: ChainVerifier, row: Any) -> None:
    try:
        event = json.loads(row.raw)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        verifier.fail("payload is not a JSON object", verifier.next_seq)
        return
    problem = _column_problem(event, row)
    verifier.feed(row.seq, event, row.prev_hash, row.hash, row.raw.encode("utf-8"), problem=problem)


