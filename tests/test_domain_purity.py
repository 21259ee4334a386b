"""domain/ is pure, checked by tools: ruff's banned-API rule (domain/ruff.toml) refuses clocks,
randomness, environment, I/O, the engine and the database; builtins it cannot name are checked
here in the syntax tree. A module passed through Temporal's sandbox is not guarded by the
sandbox, so these checks are what keeps workflow code deterministic."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ROOT / "domain"
RUFF = Path(sys.executable).parent / "ruff"

IMPURE = {
    "clock": ("import datetime as dt\n\n\ndef f() -> object:\n    return dt.datetime.now()\n",
              "datetime.datetime.now"),
    "today": ("import datetime as dt\n\n\ndef f() -> object:\n    return dt.date.today()\n",
              "datetime.date.today"),
    "monotonic": ("from time import monotonic\n\n\ndef f() -> float:\n    return monotonic()\n",
                  "`time`"),
    "random": ("import random\n\n\ndef f() -> float:\n    return random.random()\n", "`random`"),
    "environment": ("import os\n\n\ndef f() -> object:\n    return os.environ\n", "`os`"),
    "database": ("import sqlalchemy\n\nX = sqlalchemy\n", "`sqlalchemy`"),
    "engine": ("from temporalio import workflow\n\nX = workflow\n", "`temporalio`"),
    "files": ("from pathlib import Path\n\nX = Path\n", "`pathlib`"),
    "live calendar": ("import holidays\n\nX = holidays\n", "`holidays`"),
    "print": ("def f() -> None:\n    print(1)\n", "T201"),
}


@pytest.mark.parametrize("case", sorted(IMPURE))
def test_ruff_refuses_impure_code_in_domain(tmp_path: Path, case: str) -> None:
    source, expected = IMPURE[case]
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "domain").mkdir()
    shutil.copy(DOMAIN / "ruff.toml", tmp_path / "domain" / "ruff.toml")
    (tmp_path / "domain" / "impure.py").write_text(source, encoding="utf-8")
    (tmp_path / "elsewhere.py").write_text(source, encoding="utf-8")
    res = subprocess.run([str(RUFF), "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=tmp_path, capture_output=True, text=True, check=False)
    flagged = [line for line in res.stdout.splitlines() if expected in line]
    assert res.returncode == 1 and flagged, res.stdout + res.stderr
    assert all(line.startswith("domain/impure.py") for line in flagged), flagged  # domain only


def test_the_real_domain_passes_ruff() -> None:
    res = subprocess.run([str(RUFF), "check", "--no-cache", "domain"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


FORBIDDEN_CALLS = {"open", "input", "exec", "eval", "compile", "__import__", "breakpoint"}


def forbidden_calls(source: str) -> list[str]:
    return [node.func.id for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS]


def test_the_syntax_check_sees_builtin_io() -> None:
    assert sorted(forbidden_calls("def f():\n    return open('x').read() + input()\n")) == ["input", "open"]


@pytest.mark.parametrize("module", sorted(p.name for p in DOMAIN.glob("*.py")))
def test_domain_calls_no_io_builtins(module: str) -> None:
    assert forbidden_calls((DOMAIN / module).read_text(encoding="utf-8")) == []
