"""`store rebuild`: the read models (tasks, inspections, findings) from the events alone.

Each task's stored chain is verified first (a broken chain is reported, never projected), then
folded with the workflow's `evolve` and projected with `domain.projection.project`: the same
functions the workflow used to write the live read model, so a rebuild equals it row for row.
`check=True` compares without writing and lists every difference.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from domain import events as ev
from domain.evolve import fold
from domain.hashchain import verify_chain
from domain.projection import project
from infra.db.models import TaskRow
from infra.db.store import ReadModel

__all__ = ["RebuildResult", "check_read_model", "compare_rows", "expected_rows",
           "read_model_for", "rebuild", "rebuild_task"]


@dataclass
class RebuildResult:
    task_id: str
    differences: list[str] = field(default_factory=list)
    written: bool = False
    error: str | None = None
    events: int = 0

    @property
    def ok(self) -> bool:
        """Nothing wrong left: no error, and any difference found was written over."""
        return self.error is None and (self.written or not self.differences)

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "ok": self.ok, "events": self.events,
                "written": self.written, "error": self.error, "differences": self.differences}


def read_model_for(events: Iterable[ev.Event]) -> ReadModel:
    """The store's read model for a task, from its events alone (fold → project)."""
    rm = project(fold(events))
    return ReadModel(task=rm.task.model_dump(),
                     inspections=[i.model_dump() for i in rm.inspections],
                     findings=[f.model_dump() for f in rm.findings])


def _norm(value: Any) -> Any:
    """A comparable form: instants as UTC ISO text, containers recursively."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # the store hands back aware UTC; a naive one is UTC too
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


def expected_rows(rm: ReadModel) -> dict[str, Any]:
    """The rebuilt read model in the shape of `EventStore.read_model_rows` (without updated_at)."""
    task = {k: v for k, v in rm.task.items() if k != "updated_at"}
    return {"task": task,
            "inspections": sorted(rm.inspections, key=lambda r: r["inspection_id"]),
            "findings": sorted(rm.findings, key=lambda r: r["finding_id"])}


def compare_rows(stored: dict[str, Any], rebuilt: dict[str, Any]) -> list[str]:
    """Human-readable differences between stored and rebuilt read-model rows."""
    diffs: list[str] = []
    s_task, r_task = stored.get("task"), rebuilt.get("task")
    if s_task is None and r_task is not None:
        diffs.append("tasks: row missing in the store")
    elif s_task is not None and r_task is None:
        diffs.append("tasks: row in the store but no events")
    elif s_task is not None and r_task is not None:
        for col in sorted(set(s_task) | set(r_task)):
            if col == "updated_at":
                continue
            a, b = _norm(s_task.get(col)), _norm(r_task.get(col))
            if a != b:
                diffs.append(f"tasks.{col}: stored {a!r}, rebuilt {b!r}")
    for table, key in (("inspections", "inspection_id"), ("findings", "finding_id")):
        s_rows = {r[key]: r for r in stored.get(table, [])}
        r_rows = {r[key]: r for r in rebuilt.get(table, [])}
        for ident in sorted(set(s_rows) | set(r_rows)):
            if ident not in s_rows:
                diffs.append(f"{table} {ident}: missing in the store")
                continue
            if ident not in r_rows:
                diffs.append(f"{table} {ident}: in the store, not in the events")
                continue
            for col in sorted(set(s_rows[ident]) | set(r_rows[ident])):
                a, b = _norm(s_rows[ident].get(col)), _norm(r_rows[ident].get(col))
                if a != b:
                    diffs.append(f"{table} {ident}.{col}: stored {a!r}, rebuilt {b!r}")
    return diffs


def rebuild_task(store: Any, task_id: str, *, check: bool = False) -> RebuildResult:
    """Rebuild (or, with `check`, compare) one task's read models from its stored events."""
    result = RebuildResult(task_id)
    stored = store.load(task_id)
    result.events = len(stored)
    current = store.read_model_rows(task_id)
    if not stored:
        if current["task"] is not None or current["inspections"] or current["findings"]:
            result.differences.append("read model rows exist but the task has no events")
        else:
            result.error = f"no events stored for task {task_id!r}"
        return result
    verdict = verify_chain(task_id, [(s.seq, s.event, s.prev_hash, s.hash) for s in stored])
    if not verdict.ok:
        result.error = (f"hash chain broken at seq {verdict.first_bad_seq}: {verdict.reason}; "
                        f"not rebuilt")
        return result
    try:
        rm = read_model_for(ev.parse_event(s.event) for s in stored)
    except ValueError as exc:
        result.error = f"the events do not fold: {exc}"
        return result
    result.differences = compare_rows(current, expected_rows(rm))
    if not check and result.differences:
        store.replace_read_models(task_id, rm)
        result.written = True
        after = store.read_model_rows(task_id)
        left = compare_rows(after, expected_rows(rm))
        if left:  # should never happen: the write did not take
            result.error = "rebuilt rows still differ: " + "; ".join(left)
    return result


def check_read_model(store: Any, task_id: str, stored: Sequence[Any] | None = None, *,
                     attempts: int = 3) -> list[str]:
    """Differences between a task's stored read models and the fold of its stored events (what
    `rebuild_task(check=True)` finds), for `audit verify`. Empty when they agree, or when the
    chain is broken (the chain check reports that; a broken chain is never folded).

    `stored`: the task's events as the caller already loaded them, with their chain verified
    (not read or hashed again). The worker writes events and read model in one transaction, but
    they are read here in two statements: a running task may record a batch in between, so the
    events are read again while the read model's `last_seq` is not the head of those read."""
    diffs: list[str] = []
    for _ in range(attempts):
        current = store.read_model_rows(task_id)
        if stored is None:
            stored = store.load(task_id)
            chain = verify_chain(task_id, [(s.seq, s.event, s.prev_hash, s.hash) for s in stored])
            if not chain.ok:
                return []
        if not stored:
            return []  # no events: `audit verify` reports the task as a whole
        try:
            rm = read_model_for(ev.parse_event(s.event) for s in stored)
        except ValueError as exc:
            return [f"the events do not fold: {exc}"]
        diffs = compare_rows(current, expected_rows(rm))
        task = current["task"]
        if not diffs or task is None or task.get("last_seq") == stored[-1].seq:
            return diffs
        stored = None  # the task recorded more since: read its events again
    return diffs


def _read_model_task_ids(store: Any) -> list[str]:
    table = TaskRow.__table__
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(table.c.task_id).order_by(table.c.task_id))]


def rebuild(store: Any, task_ids: Iterable[str] | None = None, *,
            check: bool = False) -> list[RebuildResult]:
    """Rebuild every task (or those given). Tasks with read models but no events are reported."""
    if task_ids is None:
        ids = sorted(set(store.task_ids()) | set(_read_model_task_ids(store)))
    else:
        ids = list(task_ids)
    return [rebuild_task(store, t, check=check) for t in ids]
