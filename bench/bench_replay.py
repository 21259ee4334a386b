"""Benchmark: the auditor's replay of one long task history, next to the bare Replayer.

Drives one KeyTask on the time-skipping server with N commands (default 2,000: progress
reports and malformed signals, sent in concurrent bursts; continue-as-new disabled by a high
`continue_after_events`), so the task records about N domain events. Then, on the same engine
history, times (best of `--repeat`):

- `replay`: `audit.replay` — the current KeyTask replayed in the sandbox with the capture
  interceptor, and the captured events compared with the store (canonical JSON per seq) and
  with what the history sent to `record_batch`;
- `bare_replayer`: `temporalio.worker.Replayer.replay_workflow` with the same sandbox and
  converter, nothing captured or compared;
- `unsandboxed`: the audit replay outside the sandbox (`audit verify --fast`).

Prints JSON lines:

    {"bench": "replay_build", "commands": ..., "domain_events": ..., "history_events": ..., "seconds": ...}
    {"bench": "replay", "history_events": N, "domain_events": M, "seconds": ..., "bare_replayer_seconds": ...}

    python bench/bench_replay.py                 # ~2,000 domain events
    python bench/bench_replay.py --commands 5000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Replayer  # noqa: E402

from audit.replay import compare_runs, make_replayer, replay_histories  # noqa: E402
from infra.db.store import EventStore, open_store  # noqa: E402
from infra.temporal.client import start_time_skipping  # noqa: E402
from tests.scenario import make_spec  # noqa: E402
from worker import running_worker, workflow_runner  # noqa: E402
from workflows.inputs import KeyTaskInput  # noqa: E402
from workflows.keytask import WORKFLOW_NAME, KeyTask  # noqa: E402
from workflows.search import (
    DEFINITIONS,  # noqa: E402
    initial_search_attributes,  # noqa: E402
)

QUEUE = "bench-replay"
BURST = 50


def command(i: int) -> tuple[str, Any]:
    """Half progress reports (non-decreasing), half malformed or unknown commands."""
    match i % 4:
        case 0 | 2:
            return "progress", {"actor": "unit.member", "percent": min(99, i // 25)}
        case 1:
            return "progress", {"actor": "unit.member", "percent": "lots"}
        case _:
            return f"bogus_{i % 7}", {"actor": "x"}


async def build(env: WorkflowEnvironment, store: EventStore, commands: int) -> tuple[Any, int]:
    """The task's history and its number of stored events, once everything is recorded."""
    spec = make_spec(await env.get_current_time(), due_days=(300, 600),
                     plan_code=f"b{uuid.uuid4().hex[:6]}")
    handle = await env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec, continue_after_events=1_000_000),
        id=spec.task_id, task_queue=QUEUE, search_attributes=initial_search_attributes(spec))
    for start in range(0, commands, BURST):
        await asyncio.gather(*(handle.signal(*command(i))
                               for i in range(start, min(commands, start + BURST))))
    for _ in range(3000):
        state = await handle.query("state")
        if state["recorded_seq"] == state["last_seq"] >= commands:
            break
        await asyncio.sleep(0.05)
    history = await handle.fetch_history()
    desc = await handle.describe()
    assert desc.run_id == history.run_id, "the task continued as new: raise the limit"
    return history, len(store.load(spec.task_id))


async def main(commands: int, repeat: int, save: Path | None = None) -> None:
    env = await start_time_skipping(DEFINITIONS)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/duban.db"
            store = open_store(url)
            started = time.perf_counter()
            async with running_worker(env.client, store, QUEUE):
                history, stored_count = await build(env, store, commands)
            task_id = history.workflow_id
            if save is not None:
                save.write_text(history.to_json(), encoding="utf-8")
            print(json.dumps({"bench": "replay_build", "commands": commands,
                              "domain_events": stored_count,
                              "history_events": len(history.events),
                              "seconds": round(time.perf_counter() - started, 2)}), flush=True)

            audited: list[float] = []
            replayer = make_replayer()
            for _ in range(repeat):
                t0 = time.perf_counter()
                (run,) = await replay_histories([(history, "live")], replayer)
                stored = [s.event for s in store.load(task_id)]
                divergences = compare_runs([run], stored, whole_task=True, task_id=task_id)
                audited.append(time.perf_counter() - t0)
                assert run.failure is None and not divergences, (run.failure, divergences[:3])
                assert len(run.events) == stored_count

            fast: list[float] = []
            unsandboxed = make_replayer(sandboxed=False)
            for _ in range(repeat):
                t0 = time.perf_counter()
                (run,) = await replay_histories([(history, "live")], unsandboxed)
                stored = [s.event for s in store.load(task_id)]
                divergences = compare_runs([run], stored, whole_task=True, task_id=task_id)
                fast.append(time.perf_counter() - t0)
                assert run.failure is None and not divergences

            bare: list[float] = []
            plain = Replayer(workflows=[KeyTask], data_converter=pydantic_data_converter,
                             workflow_runner=workflow_runner())
            for _ in range(repeat):
                t0 = time.perf_counter()
                await plain.replay_workflow(history)
                bare.append(time.perf_counter() - t0)
            store.engine.dispose()
        print(json.dumps({
            "bench": "replay", "history_events": len(history.events),
            "domain_events": stored_count, "seconds": round(min(audited), 3),
            "bare_replayer_seconds": round(min(bare), 3),
            "unsandboxed_seconds": round(min(fast), 3),
            "median_seconds": round(statistics.median(audited), 3),
            "median_bare_replayer_seconds": round(statistics.median(bare), 3),
            "repeat": repeat, "goal_seconds": 1.0,
        }), flush=True)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--save", type=Path, help="also write the history here (JSON)")
    args = parser.parse_args()
    asyncio.run(main(args.commands, args.repeat, args.save))
