"""Benchmark: how fast can an auditor verify the whole event store?

Builds N stored events (default 1,000,000 = 10,000 tasks x 100 events) in a SQLite file under
a temporary folder, then runs `EventStore.verify_all` over all of them, streaming, and prints
JSON lines:

    {"bench": "audit_build", "events": ..., "seconds": ..., "events_per_s": ...}
    {"bench": "audit_verify", "events": ..., "seconds": ..., "events_per_s": ..., "workers": 1}

The build is a bulk load, not the append path: rows (canonical payload, hashes, the copied
columns in the exact form SQLAlchemy stores them) are computed in worker processes and
inserted with executemany on the driver connection. A sample of tasks is then checked with
the exact `verify`, so the bulk rows are known to be what `append` would have written.

    python bench/bench_verify.py                 # 1M events, verify with 1 and 2 workers
    python bench/bench_verify.py --events 100000 --workers 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.chain_check import verify_store, verify_task_chain  # noqa: E402
from domain.hashchain import event_hash_canonical, genesis_hash  # noqa: E402
from infra.db.engine import make_engine  # noqa: E402
from infra.db.migrate import upgrade  # noqa: E402
from infra.db.store import EventStore  # noqa: E402

UTC = dt.UTC
START = dt.datetime(2026, 3, 1, 0, 30, tzinfo=UTC)
INSERT = (
    "INSERT INTO events (task_id, seq, type, occurred_at, actor, payload, schema_version,"
    " prev_hash, hash, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def body(seq: int, moment: dt.datetime) -> tuple[str, str, dict[str, Any]]:
    """A rotating mix of event shapes like the domain's (nested, Chinese text, lists)."""
    kind = seq % 5
    if seq == 1:
        return (
            "TaskAssigned",
            "system",
            {
                "spec": {
                    "code": "LW-01",
                    "title": "两委增补",
                    "nodes": [{"key": "N1", "due": iso(moment)}],
                }
            },
        )
    if kind == 0:
        return (
            "ProgressReported",
            "unit:乡镇A",
            {"percent": seq % 101, "note": "完成两委增补候选人摸底", "meets_report_node": None},
        )
    if kind == 1:
        return (
            "NodeClaimed",
            "unit:乡镇A",
            {
                "node": f"N{seq % 4}",
                "note": "",
                "evidence": [{"sha256": "ab" * 32, "name": "照片.jpg", "geo": None}],
            },
        )
    if kind == 2:
        return (
            "InspectionRecorded",
            "supervisor:督查组1",
            {
                "inspection_id": f"I-{seq}",
                "inspector": "张三",
                "visited_at": iso(moment),
                "place": "村委会",
                "nodes": ["N1"],
                "outcome": "基本达标",
                "recheck": False,
                "findings": [
                    {
                        "finding_id": f"F-{seq}",
                        "severity": "minor",
                        "description": "台账不全",
                        "node": "N1",
                        "evidence": [],
                    }
                ],
            },
        )
    if kind == 3:
        return (
            "EscalationFired",
            "system",
            {
                "step_key": f"N1/{seq}",
                "target_kind": "node",
                "target": "N1",
                "ladder": "三明",
                "step": "orange",
                "title": "橙色预警",
                "level": 2,
                "action": "notice",
                "recipients": [{"kind": "unit_head", "unit": "乡镇A"}],
                "demand": "限期整改",
                "due_since": iso(moment),
                "required_at": iso(moment),
                "reply_by": None,
            },
        )
    return (
        "LightChanged",
        "system",
        {"previous": "green", "light": "yellow", "reasons": ["N1 due soon"]},
    )


# The bulk rows use the C encoder directly: for these events (ASCII keys, no floats) its output
# is byte-identical to canonical_json (tests/test_hashchain.py proves the equivalence, and the
# sample check in main() re-verifies with canonical_json), and it skips the per-value walk.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def sqlite_ts(moment: dt.datetime) -> str:
    """SQLAlchemy's storage form of a UTC DateTime on SQLite (faster than strftime)."""
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def build_tasks(first: int, count: int, per_task: int) -> list[tuple[Any, ...]]:
    """Rows for tasks first..first+count-1, hashes chained exactly as `append` does."""
    rows: list[tuple[Any, ...]] = []
    recorded = sqlite_ts(dt.datetime.now(UTC))
    for t in range(first, first + count):
        task_id = f"PLAN-2026/LW-01/村{t:06d}"
        prev = genesis_hash(task_id)
        for seq in range(1, per_task + 1):
            # Every third event carries microseconds, as workflow.now() often does.
            moment = START + dt.timedelta(
                minutes=t + seq * 37, microseconds=(seq % 3 == 0) * 123456
            )
            type_, actor, extra = body(seq, moment)
            event = {
                "task_id": task_id,
                "seq": seq,
                "type": type_,
                "at": iso(moment),
                "actor": actor,
                "v": 1,
                **extra,
            }
            text = _encode(event)
            current = event_hash_canonical(prev, text.encode("utf-8"))
            rows.append(
                (task_id, seq, type_, sqlite_ts(moment), actor, text, 1, prev, current, recorded)
            )
            prev = current
    return rows


def _chunks(tasks: int, size: int) -> Iterator[tuple[int, int]]:
    for first in range(0, tasks, size):
        yield first, min(size, tasks - first)


def build(path: Path, events: int, per_task: int, procs: int) -> float:
    url = f"sqlite:///{path}"
    upgrade(url)
    tasks = max(1, events // per_task)
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a bulk load into a throw-away file
    conn.execute("BEGIN")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        # Insert in task order while the next chunks are computed; a bounded window of chunks
        # in flight keeps memory flat.
        pending: deque[Future[list[tuple[Any, ...]]]] = deque()
        for first, count in _chunks(tasks, 100):
            pending.append(pool.submit(build_tasks, first, count, per_task))
            if len(pending) > 2 * procs:
                conn.executemany(INSERT, pending.popleft().result())
        while pending:
            conn.executemany(INSERT, pending.popleft().result())
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def line(**fields: Any) -> None:
    print(json.dumps(fields, ensure_ascii=False), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="comma-separated verify worker counts")
    parser.add_argument("--batch", type=int, default=5000, help="rows fetched per round trip")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the file (kept)")
    parser.add_argument(
        "--exact", action="store_true", help="also time the exact (non-screened) walk"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="duban-bench-") as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "bench_verify.db"
        path.unlink(missing_ok=True)
        tasks = max(1, args.events // args.per_task)
        total = tasks * args.per_task
        seconds = build(path, total, args.per_task, os.cpu_count() or 1)
        line(
            bench="audit_build",
            events=total,
            tasks=tasks,
            seconds=round(seconds, 3),
            events_per_s=round(total / seconds),
            db_mb=round(path.stat().st_size / 2**20, 1),
        )

        engine = make_engine(f"sqlite:///{path}")
        store = EventStore(engine)
        # The bulk rows must be exactly what append writes: check a sample the exact way.
        for task_id in store.task_ids()[:: max(1, tasks // 20)]:
            assert verify_task_chain(store, task_id).ok, task_id

        modes = [(int(w), True) for w in args.workers.split(",")]
        if args.exact:
            modes.append((1, False))
        for workers, fast in modes:
            started = time.perf_counter()
            report = verify_store(store, workers=workers, batch=args.batch, fast=fast)
            seconds = time.perf_counter() - started
            assert report.ok and report.events == total and report.tasks == tasks, report
            line(
                bench="audit_verify" if fast else "audit_verify_exact",
                events=total,
                seconds=round(seconds, 3),
                events_per_s=round(total / seconds),
                workers=workers,
                cpus=os.cpu_count(),
            )
        engine.dispose()


if __name__ == "__main__":
    main()
