"""Prometheus metrics shared by activities and the worker.

Defined once at import on the default registry (a second definition of the same name would
raise), so every module imports them from here. Two kinds:

- counters and histograms of what this process did (events recorded, commands refused,
  escalations issued and how late, store latency), updated by the activities;
- gauges of the read models (tasks by light and status per township, open findings,
  inspections by outcome, notice deliveries), computed when Prometheus scrapes, by
  `ReadModelCollector` with a few grouped SQL queries (never a query per task), so every
  worker reports the same numbers whatever it happened to record itself.

The list, with labels and meanings, is in docs/OPERATIONS.md.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

EVENTS_RECORDED = Counter(
    "duban_events_recorded",  # the client appends `_total`
    "Domain events appended to the event store.",
)
COMMANDS_REJECTED = Counter(
    "duban_commands_rejected",
    "Commands rejected by the domain (malformed, unauthorised, invalid in the state).",
    ["reason"],
)
ESCALATIONS = Counter(
    "duban_escalations",
    "Escalation ladder steps taken.",
    ["ladder", "step"],
)
NOTICES_SENT = Counter(
    "duban_notices_sent",
    "Notifications and supervision notices (督办单) sent, by channel.",
    ["channel"],
)
STORE_REFUSALS = Counter(
    "duban_store_refusals",
    "Event batches the store refused for good (a different event at a stored seq, a seq gap, "
    "a malformed batch): the task's workflow decided events that are not recorded.",
    ["kind"],
)
RECORD_LATENCY = Histogram(
    "duban_record_latency_seconds",
    "Time to record a batch of events (append + projections).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

STORE_APPEND_LATENCY = Histogram(
    "duban_store_append_seconds",
    "Time of one store.append: the events' transaction (hash chain, read model), no notices.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ESCALATION_LATENESS = Histogram(
    "duban_escalation_lateness_seconds",
    "How long after the rule's time (required_at) a ladder rung fired (EscalationFired.at), "
    "observed once per rung, when its 督办单 is first recorded.",
    ["ladder"],
    # A calm server fires within a workflow task (ms); a flood delays the timer by seconds;
    # minutes or more means a worker or the engine was down.
    buckets=(0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0),
)
RECORD_FAILURES = Counter(
    "duban_record_failures",
    "record_batch attempts that failed and will be retried (the store was unreachable, a "
    "lock timed out, ...): until a retry succeeds, the task's decided events are unrecorded.",
    ["error"],
)
UNRECORDED_FORGET_AFTER = 15 * 60.0  # seconds; > RECORD_RETRY's maximum interval + timeout


class UnrecordedTasks:
    """Tasks whose decided events wait to be recorded: a `record_batch` attempt for them failed
    here, or an attempt beyond the first (a retry: an earlier one failed or timed out, on any
    worker) started here, and no attempt has succeeded here since.

    An entry is forgotten `forget_after` seconds after it was last seen failing or retried,
    because the successful retry may have run on another worker (the retry policy's longest
    interval is 5 minutes, so a task still failing shows up again well before that)."""

    def __init__(self, forget_after: float = UNRECORDED_FORGET_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}  # task -> when first seen waiting
        self._seen: dict[str, float] = {}  # task -> when last seen failing or retried
        self._forget_after = forget_after
        self._clock = clock

    def waiting(self, task_id: str) -> None:
        now = self._clock()
        with self._lock:
            self._since.setdefault(task_id, now)
            self._seen[task_id] = now

    def recorded(self, task_id: str) -> None:
        with self._lock:
            self._since.pop(task_id, None)
            self._seen.pop(task_id, None)

    def _live(self) -> dict[str, float]:
        now = self._clock()
        with self._lock:
            for task in [t for t, at in self._seen.items() if now - at > self._forget_after]:
                del self._since[task], self._seen[task]
            return dict(self._since)

    def count(self) -> float:
        return float(len(self._live()))

    def oldest_age(self) -> float:
        live = self._live()
        return self._clock() - min(live.values()) if live else 0.0


UNRECORDED = UnrecordedTasks()
Gauge(
    "duban_tasks_unrecorded",
    "Tasks whose decided events wait to be recorded: a record_batch attempt failed or was "
    "retried on this worker and none has succeeded here since (forgotten after 15 minutes "
    "without a new failure or retry).",
).set_function(UNRECORDED.count)
Gauge(
    "duban_unrecorded_oldest_seconds",
    "How long the longest-waiting of duban_tasks_unrecorded has been waiting.",
).set_function(UNRECORDED.oldest_age)


def lateness_seconds(event: Mapping[str, Any]) -> float:
    """EscalationFired.at − required_at, in seconds (never negative: a rung fires at or after
    its time)."""
    at = dt.datetime.fromisoformat(str(event["at"]))
    required = dt.datetime.fromisoformat(str(event["required_at"]))
    return max((at - required).total_seconds(), 0.0)


# --------------------------------------------------------------------------- read-model gauges

DeliveryCounts = Callable[[Any], Mapping[Any, int]]


class ReadModelCollector(Collector):
    """Gauges of the read models, queried when scraped (`infra.db.queries`: three GROUP BYs
    and, when given, the delivery worker's counts).

    A failing query does not fail the scrape: `duban_read_model_up` says 0 and the gauges of
    that scrape are missing (an alert on it names the cause: the store)."""

    def __init__(self, engine: Any, delivery_counts: DeliveryCounts | None = None) -> None:
        self.engine = engine
        self.delivery_counts = delivery_counts

    def describe(self) -> list[Metric]:
        # Without this, registering would run collect(): a query at import or start-up.
        return []

    def collect(self) -> Iterator[Metric]:
        from infra.db import queries

        started = time.perf_counter()
        up = 1.0
        families: list[Metric] = []
        try:
            families.extend(self._tasks(queries.task_counts(self.engine)))
            families.append(self._inspections(queries.inspection_counts(self.engine)))
            if self.delivery_counts is not None:
                families.append(self._deliveries(self.delivery_counts(self.engine)))
        except Exception as exc:  # noqa: BLE001 - the scrape reports the store down instead
            import structlog

            structlog.get_logger("duban.metrics").warning("metrics.read_model_failed",
                                                          error=str(exc))
            families, up = [], 0.0
        yield from families
        yield GaugeMetricFamily("duban_read_model_up",
                                "1 if the last scrape could read the read models, else 0.",
                                value=up)
        yield GaugeMetricFamily("duban_read_model_scrape_seconds",
                                "Time the read-model queries of the last scrape took.",
                                value=time.perf_counter() - started)

    @staticmethod
    def _tasks(rows: list[dict[str, Any]]) -> list[Metric]:
        where = ["plan", "township", "township_name"]
        tasks = GaugeMetricFamily(
            "duban_tasks", "Tasks (task × responsible unit) by light and status, per plan and "
            'township (township "" for county-level units).', labels=[*where, "light", "status"])
        findings = GaugeMetricFamily(
            "duban_open_findings", "Findings (问题清单) not yet closed, per plan and township.",
            labels=where)
        missed = GaugeMetricFamily(
            "duban_missed_replies", "Notices neither signed for (签收) nor answered by their "
            "反馈时限 (逾期未反馈), per plan and township.", labels=where)
        open_by_town: dict[tuple[str, str, str], int] = {}
        missed_by_town: dict[tuple[str, str, str], int] = {}
        for r in rows:
            town = (r["plan_code"], r["township"] or "", r["township_name"] or "")
            tasks.add_metric([*town, r["light"], r["status"]], r["tasks"])
            open_by_town[town] = open_by_town.get(town, 0) + r["open_findings"]
            missed_by_town[town] = missed_by_town.get(town, 0) + r.get("missed_replies", 0)
        for town, n in open_by_town.items():
            findings.add_metric(list(town), n)
            missed.add_metric(list(town), missed_by_town[town])
        return [tasks, findings, missed]

    @staticmethod
    def _inspections(rows: list[dict[str, Any]]) -> Metric:
        family = GaugeMetricFamily("duban_inspections",
                                   "Inspections (四不两直) recorded, by plan and outcome.",
                                   labels=["plan", "outcome"])
        for r in rows:
            family.add_metric([r["plan_code"], r["outcome"]], r["inspections"])
        return family

    @staticmethod
    def _deliveries(counts: Mapping[Any, int]) -> Metric:
        """Accepts {status: n} or {(channel, status): n}."""
        family = GaugeMetricFamily(
            "duban_notice_deliveries", "Copies of notices by delivery status (pending, "
            "delivered, failed, dead: in the dead-letter list) and channel.",
            labels=["channel", "status"])
        for key, n in counts.items():
            channel, status = key if isinstance(key, tuple) else ("", key)
            family.add_metric([str(channel), str(status)], n)
        return family


def register_read_model_collector(engine: Any, delivery_counts: DeliveryCounts | None = None,
                                  registry: CollectorRegistry = REGISTRY) -> ReadModelCollector:
    """Add the read-model gauges to `registry` (unregister the result to remove them)."""
    collector = ReadModelCollector(engine, delivery_counts)
    registry.register(collector)
    return collector


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> int:
    """Serve /metrics on `addr:port` in a daemon thread; port 0 picks a free one.
    Returns the bound port."""
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_port)
