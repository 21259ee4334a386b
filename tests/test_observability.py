"""Observability: a real Prometheus scrapes a real worker process during a known scenario, the
alert rules pass promtool (and fire in its unit tests), and the logs are JSON lines with their
context, none of them repeated when a workflow is replayed.

The scenario runs on a time-skipping server of this module's own (so no other module's
workflows change its numbers) against `python worker.py` started as a process, exactly as
operators run it: both metrics endpoints, the SDK runtime, the structlog set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from domain.plan import NodeSpec, Plan, RecheckPolicy, TaskDef, resolve_plan
from infra import metrics
from infra.db.engine import make_engine
from infra.db.store import EventStore, open_store
from infra.temporal.client import start_time_skipping
from infra.temporal.devserver import free_port
from infra.temporal.interceptors import DubanInterceptor
from tests.scenario import ROSTER, UNITS, ladders, make_spec
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME, KeyTask
from workflows.search import DEFINITIONS, initial_search_attributes

REPO = Path(__file__).resolve().parent.parent
OPS = REPO / "ops"
QUEUE = "observability"
PLAN = "obs"
LIMIT = 60.0  # seconds any bounded wait may take before the test fails


def _binary(name: str) -> str:
    """The Debian `prometheus` package's binary: CI installs it (.ci/run), so there its absence
    is a failure; a developer without it skips."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"`{name}` is not installed (Debian package prometheus; .ci/run installs it)")
        pytest.skip(f"`{name}` is not installed (apt-get install prometheus)")
    return path


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a process this module started, by its pid: SIGTERM, then SIGKILL if it hangs."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local test servers
        return bytes(r.read())


async def _until(what: str, check: Any, limit: float = LIMIT, every: float = 0.1) -> Any:
    """Poll `check()` until it returns something truthy; fail after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last: Any = None
    while loop.time() < deadline:
        try:
            last = await asyncio.to_thread(check)
        except (OSError, ValueError) as exc:  # not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(every)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


# --------------------------------------------------------------------------- the scenario


def obs_plan(now: dt.datetime) -> Plan:
    """Plan `obs`: T1 (一村, due in 2 days) will be late, T2 (二村, due in 30 days) on track."""
    def task(code: str, unit: str, days: int) -> TaskDef:
        return TaskDef(code=code, title=f"观测任务{code}", lead_unit="office", responsible=(unit,),
                       ladder="deadline-lights",
                       nodes=(NodeSpec(code="N1", title="节点1", due_at=now + dt.timedelta(days=days),
                                       planned_progress=100),))

    return Plan(code=PLAN, title="观测计划", start=(now - dt.timedelta(days=1)).date(),
                start_at=now, units=UNITS, roster=ROSTER, recheck=RecheckPolicy(percent=0),
                tasks=(task("T1", "v01", 2), task("T2", "v02", 30)))


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[Any]
    app_port: int
    sdk_port: int
    log: Path
    database_url: str

    def lines(self) -> list[str]:
        return [x for x in self.log.read_text(encoding="utf-8").splitlines() if x.strip()]


@dataclass
class Scenario:
    worker: WorkerProcess
    task_ids: list[str]
    signals: int = 0
    updates: dict[str, int] = field(default_factory=dict)  # outcome -> count


@pytest.fixture(scope="module")
async def obs_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_time_skipping(DEFINITIONS)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="module")
def metrics_ports() -> tuple[int, int]:
    """The worker's two metrics ports (the application's, the SDK's), free when chosen."""
    return free_port(), free_port()


@pytest.fixture(scope="module")
async def obs_worker(obs_env: WorkflowEnvironment, metrics_ports: tuple[int, int],
                     tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerProcess]:
    """`python worker.py` on this module's server, a fresh SQLite store, free metrics ports."""
    tmp = tmp_path_factory.mktemp("obsworker")
    app_port, sdk_port = metrics_ports
    url = f"sqlite:///{tmp / 'duban.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUBAN_", "TEMPORAL_"))}
    env.update(TEMPORAL_ADDRESS=obs_env.client.service_client.config.target_host,
               DUBAN_TASK_QUEUE=QUEUE, DATABASE_URL=url, DUBAN_HOME=str(tmp),
               DUBAN_METRICS_PORT=str(app_port), DUBAN_SDK_METRICS_PORT=str(sdk_port),
               DUBAN_LOG_FORMAT="json", DUBAN_LOG_LEVEL="INFO",
               DUBAN_SDK_LOG_LEVEL="INFO")  # so the core says something: "Initializing worker"
    log = tmp / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "worker.py")], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    worker = WorkerProcess(proc, app_port, sdk_port, log, url)
    try:
        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}:\n{log.read_text()}")
            return '"worker.started"' in log.read_text(encoding="utf-8") and bool(
                _get(f"http://127.0.0.1:{app_port}/metrics"))
        await _until("the worker to start", started)
        yield worker
    finally:
        _stop(proc)


async def _update(client: Client, task_id: str, name: str, sc: Scenario, **payload: Any) -> None:
    try:
        await client.get_workflow_handle(task_id).execute_update(name, payload)
        sc.updates["accepted"] = sc.updates.get("accepted", 0) + 1
    except WorkflowUpdateFailedError:
        sc.updates["rejected"] = sc.updates.get("rejected", 0) + 1


@pytest.fixture(scope="module")
async def scenario(obs_env: WorkflowEnvironment, obs_worker: WorkerProcess) -> Scenario:
    """Two tasks; three refused commands (two unauthorised, one malformed); T1 overdue, so its
    first rung (催办提醒) fires at its due time and the delivery worker puts it in 一村's inbox;
    one failed inspection with one finding on T1."""
    client = obs_env.client
    now = await obs_env.get_current_time()
    plan = obs_plan(now)
    specs = resolve_plan(plan, ladders())
    sc = Scenario(worker=obs_worker, task_ids=[s.task_id for s in specs])
    for spec in specs:
        await client.start_workflow(WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id,
                                    task_queue=QUEUE,
                                    search_attributes=initial_search_attributes(spec))
    t1, t2 = sc.task_ids
    await _update(client, t1, "acknowledge", sc, actor="unit.member")
    await _update(client, t1, "acknowledge", sc, actor="other.unit")  # 二村: unauthorised
    await _update(client, t2, "acknowledge", sc, actor="auditor")  # reads only: unauthorised
    await _update(client, t2, "acknowledge", sc, actor="other.unit")
    await client.get_workflow_handle(t1).signal("progress", {"actor": "unit.member",
                                                             "percent": "abc"})  # malformed
    await client.get_workflow_handle(t2).signal("progress", {"actor": "other.unit", "percent": 50})
    sc.signals = 2
    await obs_env.sleep(dt.timedelta(days=3))  # T1 is a day late: red, 催办提醒 fired
    visit = await obs_env.get_current_time()
    await _update(client, t1, "inspect", sc, actor="supervisor", inspection_id="i1",
                  visited_at=visit.isoformat(), place="东城镇一村", nodes=[], outcome="不达标",
                  findings=[{"severity": "一般", "description": "台账不全"}])
    assert sc.updates == {"accepted": 3, "rejected": 2}
    # The delivery worker (a process of its own in production) sends the reminder's copy.
    from service.delivery import DeliveryWorker, store_directory

    engine = make_engine(obs_worker.database_url)
    try:
        await _until("the reminder in the outbox", lambda: EventStore(engine).list_outbox())
        store_directory(engine, plan)
        sent = DeliveryWorker(engine, transports={}).run_once(dt.datetime.now(dt.UTC))
        assert sent.expanded == 1
    finally:
        engine.dispose()
    return sc


# --------------------------------------------------------------------------- (a) Prometheus


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        body = json.loads(_get(url))
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def by(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def scalar(self, promql: str) -> float | None:
        rows = self.query(promql)
        return float(rows[0]["value"][1]) if rows else None


@pytest.fixture(scope="module")
def prom(metrics_ports: tuple[int, int],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Debian's Prometheus with ops/prometheus/prometheus.yml (targets: the worker's two
    endpoints, every 500 ms; the alert rules loaded from ops/), on a free port, stopped by pid.
    Started before the worker: Prometheus hands new targets to its scrapers 5 s after start."""
    binary = _binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    app_port, sdk_port = metrics_ports
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="500ms", evaluation_interval="500ms")
    config["rule_files"] = [str(OPS / "prometheus" / f) for f in config["rule_files"]]
    targets = {"duban": app_port, "duban_sdk": sdk_port}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    with (tmp / "prometheus.log").open("w") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield Prometheus(port)
    finally:
        _stop(proc)


EXPECTED = {
    # PromQL -> label -> value, for the scenario above
    f'sum by (light) (duban_tasks{{plan="{PLAN}"}})': ("light", {"red": 1.0, "green": 1.0}),
    f'sum by (status) (duban_tasks{{plan="{PLAN}"}})': ("status", {"in_progress": 2.0}),
    "sum by (reason) (duban_commands_rejected_total)":
        ("reason", {"unauthorised": 2.0, "malformed": 1.0}),
    "sum by (step) (duban_escalations_total)": ("step", {"remind": 1.0}),
    "sum by (ladder) (duban_escalation_lateness_seconds_count)":
        ("ladder", {"deadline-lights": 1.0}),
    f'sum by (outcome) (duban_inspections{{plan="{PLAN}"}})': ("outcome", {"不达标": 1.0}),
    f'sum by (township) (duban_open_findings{{plan="{PLAN}"}})': ("township", {"town1": 1.0}),
    'sum by (channel) (duban_notice_deliveries{status="delivered"})': ("channel", {"inbox": 1.0}),
    "duban_read_model_up": ("job", {"duban": 1.0}),
    "up": ("job", {"duban": 1.0, "duban_sdk": 1.0}),
}


async def test_prometheus_scrapes_the_worker_during_a_known_scenario(
        prom: Prometheus, scenario: Scenario) -> None:
    await _until("Prometheus to be ready", lambda: _get(f"{prom.base}/-/ready"))

    def seen() -> dict[str, dict[str, float]] | None:
        got = {q: prom.by(q, label) for q, (label, _) in EXPECTED.items()}
        return got if all(got[q] == want for q, (_, want) in EXPECTED.items()) else None

    try:
        results = await _until("the scenario's values in Prometheus", seen, limit=30)
    except pytest.fail.Exception:
        got = {q: prom.by(q, label) for q, (label, _) in EXPECTED.items()}
        assert got == {q: want for q, (_, want) in EXPECTED.items()}
        raise
    for q, values in results.items():
        print(f"PromQL {q} -> {values}")

    # The rung fired at its rule's time: on this server within a workflow task.
    late = prom.scalar("sum(duban_escalation_lateness_seconds_sum)")
    assert late is not None and 0 <= late < 1
    # The store's append latency and the SDK's own metrics are there too.
    assert (prom.scalar("sum(duban_store_append_seconds_count)") or 0) >= 5
    recorded = await _until("the SDK's activity metrics", lambda: prom.scalar(
        'sum(temporal_activity_execution_latency_count{activity_type="record_batch"})'))
    assert recorded >= 5
    print(f"PromQL sum(duban_escalation_lateness_seconds_sum) -> {late}; "
          f"record_batch executions (SDK) -> {recorded}")

    # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
    dashboard = json.loads((OPS / "grafana" / "duban.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        prom.query(expr.replace("$plan", ".*"))  # a parse error is a 400: urlopen raises

    # The alert rules loaded, and none fires on this healthy worker.
    rules = json.loads(_get(f"{prom.base}/api/v1/rules"))["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"DubanWorkerDown", "DubanEscalationsLate", "DubanRejectedCommandsSpike",
            "DubanNoticesDeadLettered", "DubanTaskStuck"} <= names
    firing = [r["name"] for g in rules for r in g["rules"] if r.get("state") == "firing"]
    assert firing == []


# --------------------------------------------------------------------------- (b) alert rules


def test_alert_rules_pass_promtool_check() -> None:
    promtool = _binary("promtool")
    out = subprocess.run([promtool, "check", "rules", str(OPS / "prometheus" / "alerts.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_alerts_fire_in_promtool_unit_tests() -> None:
    """ops/prometheus/alerts_test.yml: the worker down, a rejected-command spike, a dead
    letter, a stuck task and a late rung each fire (and not before their time)."""
    promtool = _binary("promtool")
    out = subprocess.run([promtool, "test", "rules", "alerts_test.yml"],
                         cwd=OPS / "prometheus", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    tested = yaml.safe_load((OPS / "prometheus" / "alerts_test.yml").read_text(encoding="utf-8"))
    fired = {t["alertname"] for case in tested["tests"] for t in case["alert_rule_test"]
             if t["exp_alerts"]}
    assert {"DubanWorkerDown", "DubanRejectedCommandsSpike", "DubanNoticesDeadLettered",
            "DubanTaskStuck", "DubanEscalationsLate"} <= fired


# --------------------------------------------------------------------------- (c) logs


CONTEXT = ("workflow_id", "run_id", "task_id", "plan", "unit")


def test_worker_logs_are_json_with_their_context(scenario: Scenario) -> None:
    lines = [json.loads(x) for x in scenario.worker.lines()]  # every line is one JSON object
    assert all({"event", "level", "timestamp", "logger"} <= set(x) for x in lines)
    workflow_lines = [x for x in lines if x["logger"] == "duban.workflow"]
    activity_lines = [x for x in lines if "activity" in x]
    for x in workflow_lines + activity_lines:
        assert all(x.get(k) for k in CONTEXT), x
        assert x["task_id"] == x["workflow_id"] and x["task_id"] in scenario.task_ids
    sent = [x for x in activity_lines if x["event"] == "notice.sent"]
    assert sent and {x["activity"] for x in sent} == {"record_batch"}
    assert {x["unit"] for x in sent} == {"v01"}
    # Each thing that happened to a run is one line, once.
    events = [x["event"] for x in workflow_lines]
    assert events.count("workflow.started") == len(scenario.task_ids)
    assert "workflow.signal" not in events  # signals are on the record, not in the log
    outcomes = [x["outcome"] for x in workflow_lines if x["event"] == "workflow.update"]
    assert {o: outcomes.count(o) for o in set(outcomes)} == scenario.updates
    # The SDK core's own lines, forwarded into the same format.
    core = [x for x in lines if x["logger"] == "temporalio.core"]
    assert core and all(x["target"].startswith("temporal") for x in core)
    assert any(x["event"] == "Initializing worker" and x["fields"]["task_queue"] == QUEUE
               for x in core)


class _FlakyStore:
    """The store, but its first append fails as a locked database would: the batch waits for
    a retry, which `duban_tasks_unrecorded` shows meanwhile."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.appends = 0
        self.waiting_at_retry: float | None = None

    def append(self, *args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        self.appends += 1
        if self.appends == 1:
            raise OperationalError("INSERT INTO events ...", {}, Exception("database is locked"))
        if self.appends == 2:
            self.waiting_at_retry = metrics.UNRECORDED.count()
        return self._store.append(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@contextlib.contextmanager
def captured_json_logs() -> Iterator[io.StringIO]:
    from infra.logging import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    try:
        configure_logging("json", level="DEBUG", stream=buf)
        yield buf
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in buf.getvalue().splitlines() if x.strip()]


async def test_no_log_line_twice_on_replay(obs_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """A worker that caches no workflow replays the whole history at every activation; each
    signal, update and run is still logged once. Replaying the finished history again (as
    `audit verify` does) logs nothing at all."""
    from worker import running_worker, workflow_runner

    store = _FlakyStore(open_store(f"sqlite:///{tmp_path / 'duban.db'}"))
    def failures() -> float:
        return REGISTRY.get_sample_value("duban_record_failures_total",
                                         {"error": "OperationalError"}) or 0.0

    failed_before = failures()
    now = await obs_env.get_current_time()
    spec = make_spec(now, due_days=(5,), progress=(100,), plan_code="obsreplay")
    queue = "observability-replay"
    with captured_json_logs() as buf:
        async with running_worker(obs_env.client, store, queue, max_cached_workflows=0):
            handle = await obs_env.client.start_workflow(
                WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id, task_queue=queue,
                search_attributes=initial_search_attributes(spec))
            await handle.execute_update("acknowledge", {"actor": "unit.member"})
            await handle.signal("progress", {"actor": "unit.member", "percent": 60})
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update("claim", {"actor": "other.unit", "node": "N1"})
            await handle.signal("progress", {"actor": "unit.member", "percent": 100})
            await handle.execute_update("claim", {"actor": "unit.member", "node": "N1"})
            await handle.execute_update("accept", {"actor": "supervisor", "node": "N1"})
            assert (await handle.result())["status"] == "closed"
        live = _lines(buf)
        history = await handle.fetch_history()
        replayed_from = len(buf.getvalue())
        await Replayer(workflows=[KeyTask], workflow_runner=workflow_runner(),
                       interceptors=[DubanInterceptor()],
                       data_converter=pydantic_data_converter).replay_workflow(history)
        replay_output = buf.getvalue()[replayed_from:]

    # Without a cache every workflow task replayed the run so far (evicting it after).
    assert sum("Workflow cache full" in x["event"] for x in live) >= 5
    mine = [x for x in live if x.get("task_id") == spec.task_id]
    for x in mine:
        assert all(x.get(k) for k in CONTEXT), x
    assert {x["run_id"] for x in mine} == {handle.result_run_id}  # one run, no continue-as-new
    flow = [x["event"] for x in mine if x["logger"] == "duban.workflow"]
    assert flow.count("workflow.started") == 1 and flow.count("workflow.completed") == 1
    assert "workflow.signal" not in flow
    updates = [(x["update"], x["outcome"]) for x in mine if x["event"] == "workflow.update"]
    assert sorted(updates) == sorted([("acknowledge", "accepted"), ("claim", "rejected"),
                                      ("claim", "accepted"), ("accept", "accepted")])
    # The activity's lines carry the activity; the failed first attempt and its retry too.
    acts = [x for x in mine if "activity" in x]
    assert {x["activity"] for x in acts} == {"record_batch", "archive_history"}
    failed = [x for x in acts if x["event"] == "activity.failed"]
    assert len(failed) == 1 and failed[0]["retried"] and "database is locked" in failed[0]["error"]
    assert [x["attempt"] for x in acts if x["event"] == "activity.retry"] == [2]
    assert failures() - failed_before == 1
    assert store.waiting_at_retry == 1.0 and metrics.UNRECORDED.count() == 0.0
    # The replay re-ran the whole run and every handler: not one line of ours, and nothing at
    # INFO or above (the level operators run at); the SDK's own DEBUG lines about the replay
    # itself ("Evicting workflow ... after replay") are all there is.
    replayed = [json.loads(x) for x in replay_output.splitlines() if x.strip()]
    assert [x for x in replayed
            if x["logger"].startswith("duban") or x["level"] != "debug"] == [], replayed


# --------------------------------------------------------------------------- collector


def test_read_model_gauges_come_from_grouped_queries(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from sqlalchemy import insert

    store = open_store(f"sqlite:///{tmp_path / 'duban.db'}")
    with store.engine.begin() as conn:
        from infra.db.models import InspectionRow, TaskRow

        rows = [("p/A/v01", "v01", "town1", "东城镇", "red", "acknowledged", 2),
                ("p/B/v01", "v01", "town1", "东城镇", "red", "acknowledged", 0),
                ("p/A/office", "office", None, None, "green", "completed", 0)]
        for task_id, unit, town, town_name, light, status, findings in rows:
            conn.execute(insert(TaskRow).values(
                task_id=task_id, plan_code="p", task_code=task_id.split("/")[1], unit_code=unit,
                township=town, township_name=town_name, title="t", status=status, light=light,
                level=0, progress=0, nodes=[], open_findings=findings, last_seq=1,
                updated_at=dt.datetime.now(dt.UTC)))
        conn.execute(insert(InspectionRow).values(
            inspection_id="i1", task_id="p/A/v01", inspector="s", visited_at=dt.datetime.now(dt.UTC),
            place="x", outcome="基本达标", nodes=[], findings_count=2))
    registry = CollectorRegistry()
    metrics.register_read_model_collector(
        store.engine, delivery_counts=lambda _e: {("email", "dead"): 1, ("email", "delivered"): 4},
        registry=registry)
    text = generate_latest(registry).decode()
    assert ('duban_tasks{light="red",plan="p",status="acknowledged",township="town1",'
            'township_name="东城镇"} 2.0') in text
    assert 'duban_tasks{light="green",plan="p",status="completed",township="",township_name=""} 1.0' in text
    assert 'duban_open_findings{plan="p",township="town1",township_name="东城镇"} 2.0' in text
    assert 'duban_inspections{outcome="基本达标",plan="p"} 1.0' in text
    assert 'duban_notice_deliveries{channel="email",status="dead"} 1.0' in text
    assert "duban_read_model_up 1.0" in text

    broken = CollectorRegistry()
    store.engine.dispose()
    (tmp_path / "duban.db").unlink()
    (tmp_path / "duban.db").mkdir()  # no longer a database file: every query fails
    metrics.register_read_model_collector(store.engine, registry=broken)
    text = generate_latest(broken).decode()
    assert "duban_read_model_up 0.0" in text and "duban_tasks{" not in text


def test_unrecorded_tasks_are_forgotten_when_retried_elsewhere() -> None:
    now = [0.0]
    tracker = metrics.UnrecordedTasks(forget_after=900, clock=lambda: now[0])
    tracker.waiting("p/A/v01")
    now[0] = 60
    tracker.waiting("p/A/v01")
    tracker.waiting("p/B/v01")
    assert (tracker.count(), tracker.oldest_age()) == (2.0, 60.0)
    tracker.recorded("p/B/v01")
    now[0] = 961  # 15 minutes after p/A/v01 was last seen failing: its retry ran elsewhere
    assert (tracker.count(), tracker.oldest_age()) == (0.0, 0.0)


def test_sdk_metrics_port_follows_the_application_port() -> None:
    from infra.settings import Settings

    s = Settings.from_env({})
    assert (s.metrics_port, s.sdk_metrics_port, s.metrics_host, s.sdk_log_level) == (
        9464, 9465, "127.0.0.1", "WARN")
    s = Settings.from_env({"DUBAN_METRICS_PORT": "9100", "DUBAN_SDK_LOG_LEVEL": "info"})
    assert (s.sdk_metrics_port, s.sdk_log_level) == (9101, "INFO")
    assert Settings.from_env({"DUBAN_METRICS_PORT": "0"}).sdk_metrics_port == 0  # free port
    assert Settings.from_env({"DUBAN_SDK_METRICS_PORT": "9999",
                              "DUBAN_METRICS_HOST": "0.0.0.0"}).sdk_metrics_port == 9999
