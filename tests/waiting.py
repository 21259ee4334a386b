"""One bounded wait for the tests: poll a condition until it holds, never a blind sleep."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def until(pred: Callable[[], Any], what: str, seconds: float = 30.0,
                poll: float = 0.05) -> Any:
    """The first truthy value of `pred()` (a plain or an async callable), or an assertion
    error naming `what` after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(poll)
