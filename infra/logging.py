"""structlog set-up: one format for our own logs and for stdlib loggers (temporalio, alembic)
and for the Temporal SDK core's lines (forwarded into the stdlib logger `SDK_CORE_LOGGER` by
the runtime, see `infra.temporal.client.make_runtime`).

JSON (one object a line) for collectors and CI, a console renderer for people at a terminal.
Context bound with `structlog.contextvars` (the worker's interceptor binds workflow id, run id,
task, unit and activity around each activity) is merged into every line.
The module is named `logging` inside the `infra` package; absolute imports keep the stdlib one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import structlog

_LEVEL_ENV = "DUBAN_LOG_LEVEL"
SDK_CORE_LOGGER = "temporalio.core"  # where the SDK core's forwarded log lines arrive


def _sdk_core_fields(_logger: Any, _name: str,
                     event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A forwarded SDK core record carries its entry as `temporal_log`: keep its target (the
    core's module) and its fields as JSON values instead of the object's repr."""
    entry = event_dict.pop("temporal_log", None)
    if entry is not None:
        event_dict["target"] = getattr(entry, "target", None)
        try:
            fields = dict(entry.fields)
        except Exception:  # noqa: BLE001 - the SDK says this should not happen; keep the line
            fields = {}
        if fields:
            event_dict["fields"] = {k: v if isinstance(v, str | int | float | bool) or v is None
                                    else str(v) for k, v in fields.items()}
    return event_dict


def configure_logging(fmt: str | None = None, level: str | int | None = None,
                      stream: IO[str] | None = None) -> None:
    """Configure structlog and route stdlib logging through it. Safe to call more than once.

    `fmt`: "json" or "console" (default: settings' DUBAN_LOG_FORMAT). `level`: a name or number
    (default: DUBAN_LOG_LEVEL or INFO). `stream`: where lines go (default: stderr).
    """
    if fmt is None:
        from infra.settings import get_settings

        fmt = get_settings().log_format
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', not {fmt!r}")
    lvl = level if level is not None else os.environ.get(_LEVEL_ENV, "INFO")
    numeric = logging.getLevelName(lvl.upper()) if isinstance(lvl, str) else lvl
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {lvl!r}")

    # Shared by structlog loggers and foreign (stdlib) records, so both come out alike.
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        _sdk_core_fields,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)  # keep 督办 readable
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter)
    handler.set_name("duban")
    root = logging.getLogger()
    # Replace only our own handler on re-configuration; leave others (e.g. pytest's) alone.
    for h in list(root.handlers):
        if h.get_name() == "duban":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(numeric)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
