"""One Duban worker process: the KeyTask workflow, every activity, two metrics endpoints.

    python worker.py            # settings from the environment (see infra/settings.py)

The application's metrics (prometheus-client: counters of what this worker did, gauges of the
read models computed at scrape time) are on DUBAN_METRICS_PORT; the Temporal SDK core's own
(polls, task latencies, slots, ...) on DUBAN_SDK_METRICS_PORT (default: the next port). Logs are
structlog lines (JSON off a terminal), the SDK core's included; the interceptor binds workflow
id, run id, task, unit and activity. See docs/OPERATIONS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.record import DubanActivities
from infra.settings import Settings, get_settings
from infra.temporal.interceptors import DubanInterceptor
from workflows.keytask import KeyTask

# Exactly the pure, deterministic modules the workflow uses, imported once outside the sandbox:
# the domain (and the libraries its models are made of), and the workflow's own input and
# search-attribute modules, so the pydantic converter sees one class, not a per-sandbox copy.
PASSTHROUGH = ("domain", "pydantic", "pydantic_core", "annotated_types", "rfc8785", "zoneinfo",
               "cryptography",
               "workflows.inputs", "workflows.search")


def workflow_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))


@contextlib.asynccontextmanager
async def running_worker(client: Client, store: Any, task_queue: str,
                         **worker_kwargs: Any) -> AsyncIterator[Worker]:
    """A worker with everything registered, shut down cleanly on exit (an abrupt exit can abort in the SDK's runtime, exit 134).
    The log-context interceptor is on unless `interceptors` is given."""
    acts = DubanActivities(store, client)
    worker_kwargs.setdefault("interceptors", [DubanInterceptor()])
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="duban-act") as pool:
        worker = Worker(
            client, task_queue=task_queue, workflows=[KeyTask],
            activities=[acts.record_batch, acts.archive_history], activity_executor=pool,
            workflow_runner=workflow_runner(), **worker_kwargs,
        )
        async with worker:
            yield worker


def _delivery_counts() -> Any:
    """The delivery worker's copies per (channel, status), for the notice gauges."""
    from service.delivery import delivery_counts_by_channel

    return delivery_counts_by_channel


async def main(settings: Settings | None = None) -> None:
    from infra.db.store import open_store
    from infra.logging import configure_logging, get_logger
    from infra.metrics import register_read_model_collector, start_metrics_server
    from infra.temporal.client import connect, make_runtime

    settings = settings or get_settings()
    configure_logging(settings.log_format)
    log = get_logger("duban.worker")
    store = open_store(settings.database_url)
    runtime, sdk_port = make_runtime(settings)
    client = await connect(settings, runtime=runtime)
    register_read_model_collector(store.engine, delivery_counts=_delivery_counts())
    port = start_metrics_server(settings.metrics_port, addr=settings.metrics_host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(client, store, settings.task_queue):
        log.info("worker.started", task_queue=settings.task_queue,
                 address=settings.temporal_address, metrics_port=port,
                 sdk_metrics_port=sdk_port,
                 database=settings.database_url.split("@")[-1])
        await stop.wait()
    log.info("worker.stopped")


if __name__ == "__main__":
    from infra.process_exit import run_and_exit

    # Ends without interpreter finalization, where the SDK's runtime threads can abort a
    # process that has already stopped cleanly (exit 134 after `worker.stopped`).
    run_and_exit(lambda: asyncio.run(main()))
