"""Fixtures of the web tests (registered in tests/conftest.py's `pytest_plugins`).

- `web_stack` (session): the plan of `tests.web_harness.board_plan` loaded into the
  time-skipping server, recorded by the shared worker into `wf_store`, in its known state; one
  credential per role; the app served by uvicorn on a free port; stopped at the session's end.
- `web`: the same stack, its signer's clock re-measured for the test about to run.
- `browser` (session): headless Chromium (Debian's, never downloaded) via Playwright.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.web_harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROSTER,
    WebStack,
    board_plan,
    new_stack,
    reach_known_state,
    require_chromium,
    serve,
)


@pytest.fixture(scope="session")
async def web_stack(ts_env: WorkflowEnvironment, worker: None, wf_store: Any,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebStack]:
    stack = new_stack(ts_env, wf_store, tmp_path_factory.mktemp("evidence"))
    await stack.sync_clock()
    await stack.load_plan(board_plan(await stack.now()))
    stack.issue_all(m.actor for m in ROSTER)
    await reach_known_state(stack)
    server = await serve(stack.app)
    stack.base_url = server.url
    try:
        yield stack
    finally:
        server.stop()


@pytest.fixture
async def web(web_stack: WebStack) -> WebStack:
    await web_stack.sync_clock()
    return web_stack


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """Chromium must run in CI; elsewhere the browser tests skip when it is not installed."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                            args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
