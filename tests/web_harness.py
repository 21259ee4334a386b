"""The live stack the web tests run against (前台端到端): a plan loaded into the time-skipping
server, the worker recording into `wf_store`, the roster and one sign-in per role, and the web
app served by uvicorn on a free port in a background thread.

Every workflow is started with signed commands required (`AuthPolicy(require_signed=True)`),
trusting only this stack's "web" key: a command reaches a task only through the web app (or
`WebStack.send`, which signs with the same key, for arranging a state).

The time-skipping server's clock runs ahead of the wall clock once any test has skipped time;
a task judges a signed assertion's time and the pages judge lights and days late by the engine's
time, so the app's clock (`WebContext.clock`) is the wall clock plus the server's lead,
re-measured before each test by the `web` fixture. The plan's dates are relative to the server's
clock too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from domain.identity import AuthPolicy
from domain.plan import Member, NodeSpec, Plan, RecheckPolicy, TaskDef, TaskSpec, Unit, resolve_plan
from infra.db.models import TaskRow
from infra.signing import Signer, new_signer
from infra.temporal.devserver import free_port
from service import users
from service.commands import send_command
from tests.conftest import WORKFLOW_QUEUE
from tests.scenario import ladders
from tests.waiting import until
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
WAIT_SECONDS = 30.0  # bound of every wait for the record to catch up

PLAN = "webplan"
OFFICE = "wdcb"
UNITS = (
    Unit(code=OFFICE, name="区委督查办", kind="office"),
    Unit(code="wt1", name="东城镇", kind="township"),
    Unit(code="wt2", name="西山镇", kind="township"),
    Unit(code="wv11", name="东城镇一村", kind="village", parent="wt1"),
    Unit(code="wv12", name="东城镇二村", kind="village", parent="wt1"),
    Unit(code="wv21", name="西山镇一村", kind="village", parent="wt2"),
)
UNIT_NAMES = {u.code: u.name for u in UNITS}
OWN_UNIT = "wv11"  # the member's and the head's unit
OTHER_UNIT = "wv21"  # another township's village: never visible to them

# One actor per role (the credential each role signs in with), plus one spare member of
# another unit for the tests that revoke or throttle a credential.
ROLES = ("member", "head", "lead", "supervisor", "auditor", "office", "leader")
ACTORS = {role: f"w.{role}" for role in ROLES}
SPARE = "w.spare"
DONE_MEMBER = "w.v12"  # reports T3 done at wv12 (the board's known state)
ROSTER = (
    Member(actor=ACTORS["member"], name="王村委", unit=OWN_UNIT, roles=("member",)),
    Member(actor=ACTORS["head"], name="李书记", unit=OWN_UNIT, roles=("head",)),
    Member(actor=ACTORS["lead"], name="陈主任", unit=OFFICE, roles=("lead",)),
    Member(actor=ACTORS["supervisor"], name="刘督查", unit=OFFICE, roles=("supervisor",)),
    Member(actor=ACTORS["auditor"], name="孙审计", unit=OFFICE, roles=("auditor",)),
    Member(actor=ACTORS["office"], name="郑专班", unit=OFFICE, roles=("office",)),
    Member(actor=ACTORS["leader"], name="吴书记", unit=OFFICE, roles=("leader",)),
    Member(actor=SPARE, name="赵村委", unit=OTHER_UNIT, roles=("member",)),
    Member(actor=DONE_MEMBER, name="钱村委", unit="wv12", roles=("member",)),
)
VILLAGES = ("wv11", "wv12", "wv21")

# The known state of the board (see `board_plan`): T1 overdue everywhere (red), T2 on time
# (green), T3 done at wv12 only (completed by `reach_known_state`).
RED_TASK, GREEN_TASK, DONE_TASK = "T1", "T2", "T3"
DONE_UNIT = "wv12"


def board_plan(now: dt.datetime, code: str = PLAN) -> Plan:
    """Two townships, three villages, three key tasks, dated around the server's `now`."""

    def node(code: str, title: str, days: float, progress: int) -> NodeSpec:
        return NodeSpec(code=code, title=title, due_at=now + dt.timedelta(days=days),
                        planned_progress=progress)

    tasks = (
        TaskDef(code=RED_TASK, title="村两委班子增补", lead_unit=OFFICE, responsible=VILLAGES,
                nodes=(node("N1", "摸底调查", -1 / 24, 50), node("N2", "完成增补", 20, 100))),
        TaskDef(code=GREEN_TASK, title="人居环境整治", lead_unit=OFFICE, responsible=VILLAGES,
                nodes=(node("N1", "制定方案", 10, 30), node("N2", "整治到位", 30, 100))),
        TaskDef(code=DONE_TASK, title="防汛隐患排查", lead_unit=OFFICE, responsible=("wv11", "wv12"),
                nodes=(node("N1", "排查销号", 30, 100),)),
    )
    return Plan(code=code, title="网页端测试计划", start=(now - dt.timedelta(days=3)).date(),
                start_at=now - dt.timedelta(days=2), units=UNITS, roster=ROSTER,
                recheck=RecheckPolicy(percent=0), tasks=tasks)


def task_id(task: str, unit: str, plan: str = PLAN) -> str:
    return f"{plan}/{task}/{unit}"


@dataclass
class WebStack:
    env: WorkflowEnvironment
    store: Any  # infra.db.store.EventStore (wf_store)
    signer: Signer
    evidence_dir: Path
    base_url: str = ""
    passwords: dict[str, str] = field(default_factory=dict)  # actor -> password
    specs: dict[str, TaskSpec] = field(default_factory=dict)  # task id -> spec
    offset: dt.timedelta = dt.timedelta(0)  # the test server's lead over the wall clock

    @property
    def engine(self) -> Any:
        return self.store.engine

    @property
    def target(self) -> str:
        return str(self.env.client.service_client.config.target_host)

    def password(self, role_or_actor: str) -> str:
        return self.passwords[ACTORS.get(role_or_actor, role_or_actor)]

    # --- the app ---------------------------------------------------------------------------

    def context(self) -> Any:
        """A fresh WebContext on the same store and key; its Temporal client is connected on
        first use, in the event loop of whoever serves the app (uvicorn's thread, a TestClient's
        portal): a client belongs to the loop it was made in."""
        from web.context import WebContext

        target = self.target

        async def connect() -> Client:
            return await Client.connect(target, namespace="default",
                                        data_converter=pydantic_data_converter)

        return WebContext(engine=self.engine, store=self.store, evidence_dir=self.evidence_dir,
                          connect=connect, signer=self.signer, clock=self.clock)

    def app(self) -> Any:
        from web.app import create_app

        return create_app(self.context())

    # --- the clock -------------------------------------------------------------------------

    async def now(self) -> dt.datetime:
        return await self.env.get_current_time()

    def clock(self) -> dt.datetime:
        """The engine's time as the app sees it: the wall clock plus the server's lead."""
        return dt.datetime.now(dt.UTC) + self.offset

    async def sync_clock(self) -> None:
        """Measure the server's lead over the wall clock (it grows when a test skips time)."""
        server = await self.env.get_current_time()
        self.offset = server - dt.datetime.now(dt.UTC)

    # --- plans and commands -----------------------------------------------------------------

    async def load_plan(self, plan: Plan) -> list[TaskSpec]:
        """What `starter.py plan load` does: start one task per (task × unit), signed commands
        required; store the roster. Returns once every task's first decisions are recorded."""
        specs = resolve_plan(plan, ladders())
        policy = AuthPolicy(require_signed=True, trusted=(self.signer.trusted(),))
        await asyncio.gather(*(self.env.client.start_workflow(
            WORKFLOW_NAME, KeyTaskInput(spec=s, auth=policy), id=s.task_id,
            task_queue=WORKFLOW_QUEUE, search_attributes=initial_search_attributes(s))
            for s in specs))
        users.store_roster(self.engine, plan.code, plan.roster,
                           {u.code: u.name for u in plan.units}, now=dt.datetime.now(dt.UTC))
        for s in specs:
            self.specs[s.task_id] = s
        await asyncio.gather(*(self.settle(s.task_id) for s in specs))
        return specs

    def issue_all(self, actors: Iterable[str]) -> None:
        for actor in actors:
            self.passwords[actor] = users.issue(self.engine, actor, now=dt.datetime.now(dt.UTC),
                                                issued_by="tests")

    async def send(self, tid: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A command signed by the app's key (as the web app would send it), waited for until
        the store has recorded what it decided. For arranging a state before a test."""
        await self.sync_clock()
        answer = await send_command(self.env.client, tid, name, payload, signer=self.signer,
                                    now=self.clock())
        seqs = [e["seq"] for e in answer.get("events", []) if "seq" in e]
        if seqs:
            await self.wait_recorded(tid, max(seqs))
        return answer

    def recorded_seq(self, tid: str) -> int:
        """The last seq the read model has for the task (0 before its first record)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(TaskRow.last_seq).where(TaskRow.task_id == tid)).first()
        return int(row[0]) if row is not None else 0

    async def wait_recorded(self, tid: str, seq: int) -> None:
        await until(lambda: self.recorded_seq(tid) >= seq and self.store.head(tid).seq >= seq,
                    f"{tid}: seq {seq} recorded")

    async def settle(self, tid: str) -> None:
        """Until the store holds everything the task has decided (updates answer before the
        workflow's record activity has run)."""
        handle = self.env.client.get_workflow_handle(tid)

        async def caught_up() -> bool:
            state = await handle.query("state")
            last = int(state["last_seq"])
            return last > 0 and state["recorded_seq"] == last and self.recorded_seq(tid) == last

        await until(caught_up, f"{tid}: the store caught up")

    def events(self, tid: str) -> list[dict[str, Any]]:
        return [s.event for s in self.store.load(tid)]


async def reach_known_state(stack: WebStack) -> None:
    """The board's known state: T3 at wv12 claimed and accepted (completed)."""
    tid = task_id(DONE_TASK, DONE_UNIT)
    await stack.send(tid, "claim", {"actor": DONE_MEMBER, "node": "N1"})
    await stack.send(tid, "accept", {"actor": ACTORS["supervisor"], "node": "N1"})
    await stack.settle(tid)


class LiveServer:
    """uvicorn in a background thread (its own event loop), stopped by `stop`."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web-live", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> bool:
        """False if it could not serve (another process took the free port meanwhile)."""
        self.thread.start()
        await until(lambda: self.server.started or not self.thread.is_alive(),
                    "the web server to start")
        return bool(self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=WAIT_SECONDS)
        assert not self.thread.is_alive(), "the web server did not stop"


async def serve(app_factory: Callable[[], Any], attempts: int = 3) -> LiveServer:
    for _ in range(attempts):
        server = LiveServer(app_factory())
        if await server.start():
            return server
        server.thread.join(timeout=WAIT_SECONDS)
    raise AssertionError(f"the web server did not start in {attempts} attempts")


def new_stack(env: WorkflowEnvironment, store: Any, evidence_dir: Path) -> WebStack:
    return WebStack(env=env, store=store, signer=new_signer("web"),
                    evidence_dir=evidence_dir)


def ci() -> bool:
    return (os.environ.get("CI") or "").strip().lower() not in ("", "0", "false", "no")


def require_chromium(path: Path = CHROMIUM) -> None:
    """In CI the browser tests must run: a missing Chromium fails them there; elsewhere they
    are skipped (with how to install it). Never downloads a browser."""
    import pytest

    if path.exists():
        return
    if ci():
        pytest.fail(f"{path} is missing in CI: the browser tests must run (.ci/run installs "
                    f"Debian's chromium)", pytrace=False)
    pytest.skip(f"{path} is not installed (apt-get install chromium)")
