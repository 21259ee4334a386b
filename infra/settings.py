"""Process settings, read from the environment once.

Plain pydantic model (no pydantic-settings): the set is small and the env names are fixed.
Defaults keep everything under the repository's `.duban/` so a fresh clone runs with no set-up.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

REPO_ROOT = Path(__file__).resolve().parent.parent

LogFormat = Literal["json", "console"]


def _default_log_format() -> LogFormat:
    # People at a terminal want colours; pipes, CI and log collectors want one JSON object a line.
    try:
        return "console" if sys.stderr.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


class Settings(BaseModel):
    model_config = {"frozen": True}

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "duban"
    home: Path = Field(default_factory=lambda: REPO_ROOT / ".duban")
    database_url: str = ""
    metrics_port: int = 9464
    # The Temporal SDK's own metrics (its Rust core's Prometheus exporter) on a port of their
    # own: one registry cannot hold both. Default: metrics_port + 1 (0 when metrics_port is 0).
    sdk_metrics_port: int = 9465
    metrics_host: str = "127.0.0.1"  # both endpoints; 0.0.0.0 to let a remote Prometheus in
    sdk_log_level: str = "WARN"  # the SDK core's log lines forwarded into ours (ERROR..TRACE)
    web_port: int = 8080  # `starter.py serve` (the web app) unless --port is given
    log_format: LogFormat = Field(default_factory=_default_log_format)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        home = Path(e.get("DUBAN_HOME") or REPO_ROOT / ".duban")
        metrics_port = int(e.get("DUBAN_METRICS_PORT") or 9464)
        values: dict[str, object] = {
            "temporal_address": e.get("TEMPORAL_ADDRESS") or "127.0.0.1:7233",
            "temporal_namespace": e.get("TEMPORAL_NAMESPACE") or "default",
            "task_queue": e.get("DUBAN_TASK_QUEUE") or "duban",
            "home": home,
            # The store file follows DUBAN_HOME unless a URL is given explicitly.
            "database_url": e.get("DATABASE_URL") or f"sqlite:///{home / 'duban.db'}",
            "metrics_port": metrics_port,
            "sdk_metrics_port": int(e.get("DUBAN_SDK_METRICS_PORT")
                                    or (metrics_port + 1 if metrics_port else 0)),
            "metrics_host": e.get("DUBAN_METRICS_HOST") or "127.0.0.1",
            "sdk_log_level": (e.get("DUBAN_SDK_LOG_LEVEL") or "WARN").strip().upper(),
            "web_port": int(e.get("DUBAN_WEB_PORT") or 8080),
        }
        if e.get("DUBAN_LOG_FORMAT"):
            values["log_format"] = e["DUBAN_LOG_FORMAT"].strip().lower()
        return cls.model_validate(values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the current environment, cached; call `get_settings.cache_clear()` in tests."""
    return Settings.from_env()
