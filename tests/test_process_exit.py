"""Our processes end with their real status and without interpreter finalization, where a
Temporal client's runtime threads can abort the process (SIGABRT, exit 134) after its work is
done. Each entry point is run as `__main__` with an `atexit` hook: the hook runs only if the
interpreter finalizes, so its marker in the output means the entry point still does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK = "FINALIZED-BY-INTERPRETER"


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def as_main(kind: str, target: str, argv: list[str]) -> str:
    """Python source that runs `target` as `__main__` (a script path or a module), with a hook
    that prints MARK if the interpreter finalizes."""
    runner = (f"runpy.run_path({target!r}, run_name='__main__')" if kind == "path"
              else f"runpy.run_module({target!r}, run_name='__main__', alter_sys=True)")
    return ("import atexit, runpy, sys\n"
            f"atexit.register(lambda: print({MARK!r}, flush=True))\n"
            f"sys.argv = {[target, *argv]!r}\n"
            f"{runner}\n")


def mapped(body: str) -> subprocess.CompletedProcess[str]:
    return run_python("import sys, typer\nfrom infra.process_exit import run_and_exit\n"
                      f"{body}\n")


@pytest.mark.parametrize(("body", "status", "stdout", "stderr"), [
    ("run_and_exit(lambda: print('done', end=''))", 0, "done", ""),
    ("run_and_exit(lambda: 3)", 3, "", ""),
    ("def f():\n    sys.stdout.write('partial')\n    sys.exit(4)\nrun_and_exit(f)", 4, "partial", ""),
    ("run_and_exit(lambda: sys.exit('bad input'))", 1, "", "bad input"),
    ("def f():\n    raise typer.Exit(2)\nrun_and_exit(f)", 2, "", ""),
    ("def f():\n    raise ValueError('boom')\nrun_and_exit(f)", 1, "", "ValueError: boom"),
    ("def f():\n    raise KeyboardInterrupt\nrun_and_exit(f)", 130, "", ""),
])
def test_run_and_exit_maps_every_ending_to_its_status(body: str, status: int, stdout: str,
                                                     stderr: str) -> None:
    done = mapped(body)
    assert done.returncode == status, done.stderr
    assert done.stdout == stdout  # written before the exit: flushed, though stdout is a pipe
    assert stderr in done.stderr


def test_typer_app_statuses_survive(tmp_path: Path) -> None:
    """The command line's own statuses: 0 for help, 2 for a usage error or refused input."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}", "DUBAN_HOME": str(tmp_path)}
    ok = run_python(as_main("path", "starter.py", ["--help"]), env)
    assert ok.returncode == 0 and "plan" in ok.stdout
    usage = run_python(as_main("path", "starter.py", ["no-such-command"]), env)
    assert usage.returncode == 2 and "No such command" in usage.stderr
    refused = run_python(as_main("path", "starter.py", ["plan", "check", str(tmp_path / "none.yaml")]), env)
    assert refused.returncode == 2 and "error" in refused.stderr
    for done in (ok, usage, refused):
        assert MARK not in done.stdout, "starter.py let the interpreter finalize"


def test_worker_ends_without_finalization_and_reports_failure(tmp_path: Path) -> None:
    """No Temporal at the address: the worker fails (status 1, the reason on stderr), and ends
    without finalization like every other ending."""
    from infra.temporal.devserver import free_port

    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "DUBAN_HOME": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}", "DUBAN_METRICS_PORT": "0"}
    done = run_python(as_main("path", "worker.py", []), env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr
    assert MARK not in done.stdout, "worker.py let the interpreter finalize"


def test_demo_ends_without_finalization(tmp_path: Path) -> None:
    """The demo cannot make its home (a file is in the way): status 1, no finalization."""
    blocker = tmp_path / "home"
    blocker.write_text("not a directory")
    done = run_python(as_main("module", "service.demo", []),
                      {"DUBAN_HOME": str(blocker), "DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"})
    assert done.returncode == 1, done.stderr
    assert MARK not in done.stdout, "service/demo.py let the interpreter finalize"
