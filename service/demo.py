"""`make demo`: a dev server, the store, a worker, the web app, the delivery worker and the
demo plan, then "where to look", with one ready sign-in per role (issued afresh on every run).

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
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from domain.plan import Member, Plan, TaskSpec

log = get_logger("duban.demo")

WORKER_PID_FILE = "worker.json"
WEB_PID_FILE = "web.json"
DELIVERY_PID_FILE = "delivery.json"
# One sign-in per role printed at the end (not discipline: its view is the auditor's).
SIGN_IN_ROLES = ("member", "head", "lead", "supervisor", "auditor", "office", "leader")
# Roles whose holders see every unit's tasks (as web.auth.SEE_ALL): a "lead" sign-in that also
# held one of them would not show what a lead unit sees.
_SEE_ALL = frozenset({"supervisor", "auditor", "office", "leader", "discipline"})
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


def _demo_keys(settings: Settings) -> dict[str, str]:
    """The web app's signing key and the trusted-keys file (made on first use, kept after): the
    demo's tasks trust the web app's signatures, and (DUBAN_REQUIRE_SIGNED unset) also take
    unsigned commands from the command line, marked self-asserted."""
    from infra.signing import new_signer, trust, write_key

    folder = settings.home / "keys"
    key, trusted = folder / "web.pem", folder / "trusted.json"
    if not key.exists():
        signer = new_signer("web")
        write_key(signer, key)
        trust(trusted, signer.trusted())
    return {"DUBAN_SIGNING_KEY": str(key), "DUBAN_SIGNER": "web",
            "DUBAN_TRUSTED_KEYS": str(trusted)}


def _env(settings: Settings, address: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(_demo_keys(settings))
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


def _ensure_web(settings: Settings, address: str, started: list[Started]) -> str:
    """The web app (`starter.py serve`) as a child like the worker; returns its URL."""
    home = settings.home
    pid_file = home / WEB_PID_FILE
    info = read_pid_file(pid_file)
    if info is not None and pid_alive(info["pid"], expect_in_cmdline="starter.py serve"):
        if (info.get("address") == address and info.get("database_url") == settings.database_url
                and _answers(info.get("url", ""))):
            log.info("reusing web app", pid=info["pid"], url=info["url"])
            return str(info["url"])
        log.warning("stopping stale demo web app", pid=info["pid"], url=info.get("url"))
        terminate_pid(info["pid"])
    port = settings.web_port if port_is_free(settings.web_port) else free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = home / "web.log"
    with open(log_file, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "starter.py"), "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=REPO_ROOT,
            env=_env(settings, address),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops it itself
        )
    write_pid_file(pid_file, pid=popen.pid, address=address, url=url,
                   database_url=settings.database_url)

    def alive() -> bool:
        return popen.poll() is None

    started.append(Started("web app", lambda: terminate_pid(popen.pid, timeout=10, popen=popen),
                           pid_file, alive, log_file, popen.poll))
    log.info("started web app", pid=popen.pid, url=url, log=str(log_file))
    _wait_for_web(url, alive, log_file)
    return url


def _ensure_delivery(settings: Settings, address: str, started: list[Started]) -> None:
    """The delivery worker (`starter.py deliver`) beside the worker: it only reads the store's
    outbox (no Temporal), so it needs no readiness check beyond staying alive."""
    home = settings.home
    pid_file = home / DELIVERY_PID_FILE
    info = read_pid_file(pid_file)
    if info is not None and pid_alive(info["pid"], expect_in_cmdline="starter.py deliver"):
        if info.get("database_url") == settings.database_url:
            log.info("reusing delivery worker", pid=info["pid"])
            return
        log.warning("stopping stale demo delivery worker", pid=info["pid"])
        terminate_pid(info["pid"])
    log_file = home / "delivery.log"
    with open(log_file, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "starter.py"), "deliver"],
            cwd=REPO_ROOT,
            env=_env(settings, address),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops it itself
        )
    write_pid_file(pid_file, pid=popen.pid, database_url=settings.database_url)

    def alive() -> bool:
        return popen.poll() is None

    started.append(Started("delivery worker",
                           lambda: terminate_pid(popen.pid, timeout=10, popen=popen),
                           pid_file, alive, log_file, popen.poll))
    log.info("started delivery worker", pid=popen.pid, log=str(log_file))


def _answers(url: str) -> bool:
    """True if the web app at `url` serves its sign-in page."""
    if not url:
        return False
    try:
        with urllib.request.urlopen(f"{url}/login", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_for_web(url: str, alive: Callable[[], bool], log_file: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    tick = threading.Event()
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"web app exited during start-up; {log_file} ends:\n"
                               f"{_tail(log_file)}")
        if _answers(url):
            return
        tick.wait(0.25)
    raise RuntimeError(f"the web app did not answer at {url} in time; see {log_file}")


def pick_sign_ins(plan: Plan, specs: list[TaskSpec]) -> list[tuple[str, Member]]:
    """One roster member per role of `SIGN_IN_ROLES` (roles nobody holds are left out).

    Prefers someone not picked already (issuing twice to one actor would revoke the first
    password), then the role's own view: no other role that sees every unit, then the fewest
    roles; then one whose unit has the most task instances (responsible for, or leading for
    "lead"), so that the view is not empty; then roster order."""
    responsible = Counter(s.unit.code for s in specs)
    leading = Counter(s.lead_unit.code for s in specs)
    picks: list[tuple[str, Member]] = []
    chosen: set[str] = set()
    for role in SIGN_IN_ROLES:
        weight = leading if role == "lead" else responsible
        holders = [(i, m) for i, m in enumerate(plan.roster) if role in m.roles]
        if not holders:
            continue

        def key(im: tuple[int, Member], role: str = role,
                weight: Counter[str] = weight) -> tuple[bool, bool, int, int, int]:
            i, m = im
            wider = bool(_SEE_ALL.intersection(m.roles) - {role})
            return (m.actor in chosen, wider, len(m.roles), -weight[m.unit], i)

        _, best = min(holders, key=key)
        picks.append((role, best))
        chosen.add(best.actor)
    return picks


@dataclass(frozen=True)
class SignIn:
    role: str
    actor: str
    name: str
    unit_name: str
    password: str


def sign_in_block(url: str, sign_ins: list[SignIn]) -> list[str]:
    """The "登录" lines of "where to look": the URL, then one line per role."""
    from web.templating import ROLE_LABELS

    lines = [f"  登录（每个角色一个）: {url}/login"]
    actor_width = max((len(s.actor) for s in sign_ins), default=0)
    for s in sign_ins:
        label = _pad(ROLE_LABELS.get(s.role, s.role), 10)
        lines.append(f"    {s.role:<10} {label} {s.actor:<{actor_width}}  口令 {s.password}  "
                     f"{s.name}（{s.unit_name}）")
    return lines


def _pad(text: str, width: int) -> str:
    """Pad to `width` terminal columns (a CJK character takes two)."""
    import unicodedata

    used = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, width - used)


def issue_sign_ins(settings: Settings, plan_file: Path) -> list[SignIn]:
    """Issue (again) one credential per role, to people of the loaded demo plan."""
    from datetime import UTC, datetime

    from domain.plan import resolve_plan
    from infra.db.engine import make_engine
    from planfiles import load_ladders, read_plan
    from service.users import issue

    plan = read_plan(plan_file)
    units = {u.code: u.name for u in plan.units}
    engine = make_engine(settings.database_url)
    issued: dict[str, str] = {}
    try:
        out = []
        for role, m in pick_sign_ins(plan, resolve_plan(plan, load_ladders())):
            if m.actor not in issued:
                issued[m.actor] = issue(engine, m.actor, now=datetime.now(UTC),
                                        issued_by="make demo")
            out.append(SignIn(role, m.actor, m.name, units.get(m.unit, m.unit),
                              issued[m.actor]))
        return out
    finally:
        engine.dispose()


def _where_to_look(settings: Settings, address: str, ui_url: str | None, plan: Path,
                   web_url: str | None = None, sign_ins: list[SignIn] | None = None) -> str:
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
        f"  Web app (前台)       : {web_url or '(not started)'}",
        "",
        *(sign_in_block(web_url, sign_ins) + [""] if web_url and sign_ins else []),
        "  Red tasks           :",
        f"    {prefix}{py} starter.py task list --light red",
        "  The board (挂图作战) :",
        f"    {prefix}{py} starter.py board",
        "  Straight from Temporal's visibility:",
        f"    .venv/bin/temporal workflow list --address {address} --query \"DubanLight='red' AND ExecutionStatus='Running'\"",
        "  督办单 notices, the outbox and the event store land in:",
        f"    {store}",
        "  Delivery (送达: e-mail DUBAN_SMTP_*, webhooks; dead letters):",
        f"    {py} starter.py deliver --dead",
        "  Logs                : "
        f"{settings.home / 'worker.log'}, {settings.home / 'web.log'}, "
        f"{settings.home / 'delivery.log'}, {settings.home / 'devserver.log'}",
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
        _ensure_delivery(settings, address, started)
        web_url = _ensure_web(settings, address, started)
        plan = settings.home / "demo-plan.yaml"
        if not plan.exists():
            _starter(env, "plan", "demo", "--out", str(plan))
        _starter(env, "plan", "load", str(plan))
        sign_ins = issue_sign_ins(settings, plan)
        print(_where_to_look(settings, address, ui_url, plan, web_url, sign_ins), flush=True)
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
