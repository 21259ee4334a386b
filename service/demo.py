"""`make demo`: a dev server, the store, a worker and the demo plan, then "where to look".

Re-running while a previous demo's server/worker still run reuses them. Ctrl-C (or SIGTERM)
stops only what this run started, by pid, and removes their pid files.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType

from infra.logging import configure_logging, get_logger
from infra.settings import REPO_ROOT, Settings, get_settings
from infra.temporal.devserver import (
    DevServer,
    find_running,
    free_port,
    pid_alive,
    port_is_free,
    read_pid_file,
    remove_pid_file,
    start_dev_server,
    terminate_pid,
    write_pid_file,
)
from workflows.search import DEFINITIONS

log = get_logger("duban.demo")

WORKER_PID_FILE = "worker.json"
DEFAULT_UI_PORT = 8233
READY_TIMEOUT = 90.0  # worker start-up on 2 busy cores (imports + sandbox validation)


@dataclass
class Started:
    """Something this run started and must stop on exit."""

    name: str
    stop: Callable[[], None]
    pid_file: Path
    alive: Callable[[], bool]
    log_file: Path
    status: Callable[[], int | None] = lambda: None  # exit status once ended, if known


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def _env(settings: Settings, address: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TEMPORAL_ADDRESS=address,
        TEMPORAL_NAMESPACE=settings.temporal_namespace,
        DUBAN_TASK_QUEUE=settings.task_queue,
        DUBAN_HOME=str(settings.home),
        DATABASE_URL=settings.database_url,
        PYTHONUNBUFFERED="1",  # the worker's log file fills as it happens
    )
    return env


def describe_status(code: int | None) -> str:
    """A child's exit status in words: a signal (e.g. SIGABRT, -6) is named, not just "failed"."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} ({code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def _starter(env: dict[str, str], *args: str) -> None:
    """Run one `starter.py` step; its real status decides (it exits without finalization, so a
    non-zero status is the command's own verdict, and is reported as such)."""
    cmd = [sys.executable, str(REPO_ROOT / "starter.py"), *args]
    log.info("run", cmd=" ".join(["starter.py", *args]))
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False)
    if done.returncode != 0:
        log.error("step failed", cmd=" ".join(["starter.py", *args]),
                  status=describe_status(done.returncode))
        raise subprocess.CalledProcessError(done.returncode, cmd)


def _ensure_dev_server(settings: Settings, started: list[Started]) -> tuple[str, str | None]:
    home = settings.home
    running = find_running(home)
    if running is not None:
        log.info("reusing dev server", pid=running.pid, address=running.address)
        return running.address, running.ui_url
    wanted = _port_of(settings.temporal_address)
    port = wanted if port_is_free(wanted) else free_port()
    ui_port = DEFAULT_UI_PORT if port_is_free(DEFAULT_UI_PORT) else free_port()
    log_file = home / "devserver.log"
    server: DevServer = asyncio.run(
        start_dev_server(home / "temporal.db", port=port, ui_port=ui_port, log_file=log_file,
                         search_attributes=DEFINITIONS)
    )
    pid_file = server.write_pid_file(home)
    started.append(Started("dev server", server.stop, pid_file, server.alive, log_file))
    log.info("started dev server", pid=server.pid, address=server.address, ui=server.ui_url)
    return server.address, server.ui_url


async def _wait_for_pollers(
    address: str, settings: Settings, alive: Callable[[], bool], log_file: Path
) -> None:
    """Poll the task queue until a worker polls it (the worker is really serving), with a deadline."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    client = await Client.connect(address, namespace=settings.temporal_namespace)
    request = DescribeTaskQueueRequest(
        namespace=settings.temporal_namespace,
        task_queue=TaskQueue(name=settings.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    try:
        while loop.time() < deadline:
            if not alive():
                raise RuntimeError(
                    f"worker exited during start-up; {log_file} ends:\n{_tail(log_file)}"
                )
            resp = await client.workflow_service.describe_task_queue(
                request, timeout=timedelta(seconds=5)
            )
            if resp.pollers:
                return
            await asyncio.sleep(0.25)
        raise RuntimeError(
            f"no worker polled task queue {settings.task_queue!r} in time; see {log_file}"
        )
    finally:
        del client


def _ensure_worker(settings: Settings, address: str, started: list[Started]) -> None:
    home = settings.home
    pid_file = home / WORKER_PID_FILE
    info = read_pid_file(pid_file)
    if info is not None and pid_alive(info["pid"], expect_in_cmdline="worker.py"):
        if info.get("address") == address:
            log.info("reusing worker", pid=info["pid"])
            return
        # A worker an earlier demo started for a server that is gone: useless, so replace it.
        log.warning("stopping stale demo worker", pid=info["pid"], address=info.get("address"))
        terminate_pid(info["pid"])
    log_file = home / "worker.log"
    with open(log_file, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "worker.py")],
            cwd=REPO_ROOT,
            env=_env(settings, address),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops the worker itself
        )
    write_pid_file(pid_file, pid=popen.pid, address=address)

    def alive() -> bool:
        return popen.poll() is None

    started.append(
        Started(
            "worker",
            lambda: terminate_pid(popen.pid, timeout=20, popen=popen),
            pid_file,
            alive,
            log_file,
            popen.poll,
        )
    )
    log.info("started worker", pid=popen.pid, log=str(log_file))
    asyncio.run(_wait_for_pollers(address, settings, alive, log_file))
    log.info("worker is polling", task_queue=settings.task_queue)


def _where_to_look(settings: Settings, address: str, ui_url: str | None, plan: Path) -> str:
    py = ".venv/bin/python"
    prefix = "" if address == "127.0.0.1:7233" else f"TEMPORAL_ADDRESS={address} "
    store = settings.database_url
    if store.startswith("sqlite:///"):
        store = f"{store.removeprefix('sqlite:///')}  (SQLite; {store})"
    lines = [
        "",
        "================ Duban demo is running ================",
        f"  Temporal web UI     : {ui_url or '(headless)'}",
        f"  Temporal address    : {address}",
        f"  plan loaded         : {plan.relative_to(REPO_ROOT) if plan.is_relative_to(REPO_ROOT) else plan}",
        "",
        "  Red tasks           :",
        f"    {prefix}{py} starter.py task list --light red",
        "  The board (挂图作战) :",
        f"    {prefix}{py} starter.py board",
        "  Straight from Temporal's visibility:",
        f"    .venv/bin/temporal workflow list --address {address} --query \"DubanLight='red' AND ExecutionStatus='Running'\"",
        "  督办单 notices, the outbox and the event store land in:",
        f"    {store}",
        "  Logs                : "
        f"{settings.home / 'worker.log'}, {settings.home / 'devserver.log'}",
        "",
        "  Ctrl-C stops what this run started (reused processes keep running).",
        "========================================================",
        "",
    ]
    return "\n".join(lines)


def _stop_all(started: list[Started]) -> None:
    for s in reversed(started):  # worker before the server it talks to
        log.info("stopping", what=s.name)
        try:
            s.stop()
        except Exception as e:  # keep going: the rest must still be stopped
            log.error("stop failed", what=s.name, error=repr(e))
        remove_pid_file(s.pid_file)
    started.clear()


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM behaves like Ctrl-C, so the same `finally` cleans up.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    del argv
    configure_logging()
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    # Explicit for both: a shell starting us in the background sets SIGINT to "ignore".
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started: list[Started] = []
    code = 0
    try:
        address, ui_url = _ensure_dev_server(settings, started)
        env = _env(settings, address)
        _starter(env, "store", "init")
        _ensure_worker(settings, address, started)
        plan = settings.home / "demo-plan.yaml"
        if not plan.exists():
            _starter(env, "plan", "demo", "--out", str(plan))
        _starter(env, "plan", "load", str(plan))
        print(_where_to_look(settings, address, ui_url, plan), flush=True)
        # Watch our children: if one dies, say so and stop the rest, rather than look alive.
        tick = threading.Event()
        while True:
            for s in started:
                if not s.alive():
                    log.error(
                        "process died", what=s.name, status=describe_status(s.status()),
                        log=str(s.log_file), tail=_tail(s.log_file),
                    )
                    return 1
            tick.wait(1.0)
    except KeyboardInterrupt:
        log.info("interrupted; shutting down")
    except subprocess.CalledProcessError:
        code = 1  # _starter has said which step and with which status
    except Exception as e:
        log.error("demo failed", error=repr(e))
        code = 1
    finally:
        # A second Ctrl-C during clean-up must not leave a half-stopped set behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(started)
    return code


if __name__ == "__main__":
    from infra.process_exit import run_and_exit

    run_and_exit(main)
