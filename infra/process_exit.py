"""Ending our processes with their real exit status, without interpreter finalization.

A process that used the Temporal client can abort while Python finalizes (`Fatal Python error:
PyGILState_Release ... Python runtime state: finalizing`, SIGABRT, exit 134 / -6): the SDK's
Rust runtime keeps threads that may still call into Python during teardown (a known, open SDK
problem: temporalio/sdk-python issue 300). A command that did everything right then reports a
failure. So every entry point (worker, command line, demo) runs through `run_and_exit`: once the
work is done and the output flushed, the process ends with `os._exit`, skipping finalization.

Nothing here is needed from finalization: files and databases are closed by the code that opened
them, logging handlers are flushed below, and `atexit` hooks are not used by this project.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from typer import Exit as TyperExit

INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


def status_of(code: object) -> int:
    """The status `sys.exit(code)` gives: None is 0, an int is itself; anything else is printed
    to stderr and gives 1 (as the interpreter does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{code}\n")
    return 1


def flush_all() -> None:
    """Flush what the process wrote: logging handlers, then stdout and stderr."""
    with contextlib.suppress(Exception):  # a broken handler must not change the exit status
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:
            continue
        with contextlib.suppress(OSError, ValueError):  # closed or broken pipe: nothing to add
            stream.flush()


def exit_now(code: int) -> NoReturn:
    """Flush, then end the process at once with `code` (no finalization: see the module doc)."""
    flush_all()
    os._exit(code)


def run_and_exit(main: Callable[[], object]) -> NoReturn:
    """Run an entry point and end the process with the status Python would have given it.

    `main` returning None or an int, raising SystemExit (typer / click's exits, usage errors,
    `sys.exit`, or `typer.Exit` itself), KeyboardInterrupt (130) or any other exception
    (traceback on stderr, 1) all map to the usual status; then `exit_now`."""
    try:
        result = main()
        code = status_of(result if isinstance(result, int) else None)
    except SystemExit as exc:
        code = status_of(exc.code)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - reported as the interpreter would, then 1
        typer_code = _typer_exit_code(exc)
        if typer_code is None:
            traceback.print_exc()
        code = 1 if typer_code is None else typer_code
    exit_now(code)


def _typer_exit_code(exc: BaseException) -> int | None:
    """typer's Exit raised outside an app's standalone mode (which turns it into SystemExit):
    its status, not a traceback."""
    if isinstance(exc, TyperExit):
        return status_of(exc.exit_code)
    return None
