"""What the web app runs on: the store's engine, a Temporal client, the signer of commands."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine


@dataclass
class WebContext:
    """Everything a request may need, built once at start-up (`starter.py serve`, the tests).

    `client` connects lazily: the board and task pages read the store only and keep working
    while the Temporal frontend is away; only commands need it."""

    engine: Engine
    store: Any  # infra.db.store.EventStore
    evidence_dir: Path  # uploaded evidence files, stored by their SHA-256
    connect: Callable[[], Awaitable[Any]]  # -> temporalio.client.Client
    signer: Any = None  # infra.signing.Signer: the web app's key, signing for its signed-in users
    secure_cookies: bool = False  # True behind HTTPS (cookies then carry `Secure`)
    # The time tasks are judged by (lights, days late, today's line, a visit's default time, a
    # command's signature): the engine's time, which is the wall clock except on a test server
    # that skips time. Sign-in sessions always run on the wall clock.
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    _client: Any = field(default=None, repr=False)

    async def client(self) -> Any:
        if self._client is None:
            self._client = await self.connect()
        return self._client
