"""Record the KeyTask histories that CI replays (tests/test_replay.py).

    .venv/bin/python tests/histories/record_histories.py          # rewrite every file
    .venv/bin/python tests/histories/record_histories.py escalation

Each scenario runs one task on the time-skipping server (own worker, own temporary store) until
it closes and saves its engine history, `handle.fetch_history().to_json()` (the same JSON as
`temporal workflow show --output json`), as `keytask-<scenario>.json`; a task continued as new
saves one file per run (`keytask-<scenario>-run<N>.json`). Together the scenarios send every
command (accepted and refused, by update and by signal, malformed and unknown ones) and fire
every step of every production ladder (deadline-lights, sanming, 13710, rectification,
false-report), take the 回头看 path both ways, and continue as new.

Files go to `tests/histories/<VERSION>/`. Re-record only for a deliberate, released change of the
workflow: bump VERSION and keep the old folders — they are what running workflows' histories look
like, and the new code must still replay them (guard the change with `workflow.patched`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError  # noqa: E402
from temporalio.service import RPCError  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from domain.calendar import calendar_from_days  # noqa: E402
from domain.identity import AuthPolicy  # noqa: E402
from domain.plan import NodeSpec, Plan, RecheckPolicy, TaskDef, TaskSpec, resolve_plan  # noqa: E402
from infra.calendar_source import calendar_for_plan  # noqa: E402
from infra.signing import Signer  # noqa: E402
from infra.temporal.client import start_time_skipping  # noqa: E402
from tests.scenario import ROSTER, UNITS, ladders  # noqa: E402
from workflows.inputs import KeyTaskInput  # noqa: E402
from workflows.keytask import WORKFLOW_NAME  # noqa: E402
from workflows.search import DEFINITIONS, initial_search_attributes  # noqa: E402

HERE = Path(__file__).resolve().parent
# One folder per released workflow version; the current code must replay all of them.
# v1: before the "drain-after-archive" patch; v2: with it; v3: the calendar recorded in the
# spec and `update_calendar`, the 回头看 draw derived from the record, 反馈时限 from the rung's
# rule time, bounded record batches, size-checked commands; v4: signed commands (the policy in
# the task's input, the proof on its events), 签收 and missed 反馈时限.
VERSION = "v4"
OUT = HERE / VERSION
QUEUE = "record-histories"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
DAY = dt.timedelta(days=1)

Handle = WorkflowHandle[Any, Any]


def spec_for(now: dt.datetime, *, ladder: str = "deadline-lights",
             due_days: tuple[int, ...] | None = (10, 20), progress: tuple[int, ...] | None = None,
             recheck: int = 0, start_level: int | None = None, major: bool = False) -> TaskSpec:
    """One task of a one-task plan. `due_days=None`: the ladder's own obligations (13710)."""
    nodes: tuple[NodeSpec, ...] = ()
    if due_days is not None:
        progress = progress or tuple(100 * (i + 1) // len(due_days) for i in range(len(due_days)))
        nodes = tuple(
            NodeSpec(code=f"N{i + 1}", title=f"节点{i + 1}", due_at=now + dt.timedelta(days=d),
                     planned_progress=p)
            for i, (d, p) in enumerate(zip(due_days, progress, strict=True)))
    plan = Plan(
        code=f"h{uuid.uuid4().hex[:6]}", title="回放样例计划", start=(now - DAY).date(),
        start_at=now, units=UNITS, roster=ROSTER, recheck=RecheckPolicy(percent=recheck),
        tasks=(TaskDef(code="T1", title="两委增补", lead_unit="office", responsible=("v01",),
                       ladder=ladder, start_level=start_level, major=major, nodes=nodes),),
    )
    return resolve_plan(plan, ladders(), calendar_for_plan(plan))[0]


class Run:
    """Drives one task: commands by update (the caller waits for the answer) or by signal."""

    def __init__(self, env: WorkflowEnvironment, handle: Handle, spec: TaskSpec) -> None:
        self.env, self.handle, self.spec = env, handle, spec

    async def update(self, name: str, refused: bool = False, **payload: Any) -> Any:
        try:
            answer = await self.handle.execute_update(name, payload)
        except WorkflowUpdateFailedError as exc:
            if refused:
                return None
            raise RuntimeError(f"{name} {payload}: {exc.cause}") from exc
        assert not refused, f"{name} {payload} was accepted"
        return answer

    async def signal(self, name: str, payload: Any) -> None:
        await self.handle.signal(name, payload)

    async def settle(self) -> dict[str, Any]:
        """Wait until everything decided so far is recorded."""
        state: dict[str, Any] = {}
        for _ in range(400):
            try:
                state = await self.handle.query("state")
            except RPCError:  # e.g. the run just continued as new
                state = {"recorded_seq": "?", "last_seq": "?"}
            else:
                if state["recorded_seq"] == state["last_seq"]:
                    return dict(state)
            await asyncio.sleep(0.02)
        raise TimeoutError(f"events not recorded: {state['recorded_seq']} < {state['last_seq']}")

    async def idle(self) -> None:
        """No activity or workflow task in flight and the history still for a moment, so a
        command sent now cannot land while the run archives itself before continuing as new
        (workflows/keytask.py: such a command's events are carried but never recorded). Reads
        the history only: on this server a query to a run that is continuing as new may hang,
        and hold the time-skipping lock while it does."""
        busy = {EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED}
        quiet, length = 0, -1
        for _ in range(500):
            events = (await self.handle.fetch_history()).events
            if events[-1].event_type not in busy and len(events) == length:
                quiet += 1
                if quiet == 3:
                    return
            else:
                quiet, length = 0, len(events)
            await asyncio.sleep(0.03)
        raise TimeoutError("the task never went idle")

    async def sleep(self, delta: dt.timedelta) -> None:
        await self.env.sleep(delta)
        await self.settle()

    async def now(self) -> str:
        return (await self.env.get_current_time()).isoformat()

    def due(self, node: int = 0) -> dt.datetime:
        return self.spec.nodes[node].due


async def lifecycle(r: Run) -> None:
    """Every command of the unit and the lead, refusals, bad signals, extension both ways,
    回头看 failed (node reopened) then passed."""
    await r.signal("progress", {"actor": "unit.member", "percent": "lots"})  # malformed
    await r.signal("progress", [1, 2, 3])  # not an object
    await r.signal("bogus", {"actor": "x"})  # unknown command
    await r.signal("claim", {"actor": "nobody", "node": "N1"})  # not on the roster
    await r.update("acknowledge", actor="unit.member", note="已签收")
    await r.update("acknowledge", refused=True, actor="unit.member")  # duplicate
    await r.sleep(2 * DAY)
    await r.update("progress", actor="unit.member", percent=40, note="摸底完成")
    await r.update("claim", actor="unit.member", node="N1",
                   evidence=[{"sha256": SHA, "name": "会议记录.jpg", "geo": "26.26,117.63"}])
    await r.update("accept", refused=True, actor="unit.member", node="N1")  # own work
    await r.update("reject_claim", actor="supervisor", node="N1", reason="缺少会议签到表")
    await r.update("claim", actor="unit.member", node="N1", note="补充签到表")
    await r.update("accept", actor="supervisor", node="N1")
    await r.update("request_extension", actor="unit.member", node="N2", reason="人手不足",
                   proposed_due=(r.due(1) + 7 * DAY).isoformat())
    await r.update("decide_extension", actor="lead.head", node="N2", approve=False,
                   reason="不同意")
    await r.update("request_extension", actor="unit.member", node="N2", reason="选举推迟",
                   proposed_due=(r.due(1) + 10 * DAY).isoformat())
    await r.update("decide_extension", actor="leader", node="N2", approve=True,
                   granted_due=(r.due(1) + 5 * DAY).isoformat(), reason="同意延期5天")
    await r.sleep(5 * DAY)
    await r.update("progress", actor="unit.member", percent=90)
    await r.update("claim", actor="unit.member", node="N2")
    await r.update("accept", actor="lead.head", node="N2")
    state = await r.settle()
    assert state["status"] == "completed", state["status"]
    await r.sleep(dt.datetime.fromisoformat(state["recheck_due"]) - dt.datetime.fromisoformat(
        await r.now()) + DAY)
    await r.update("recheck", actor="supervisor", visited_at=await r.now(), passed=False,
                   nodes=["N1"], note="抽查4户不知情")
    await r.update("claim", actor="unit.member", node="N1")
    await r.update("accept", actor="supervisor", node="N1")
    state = await r.settle()
    assert state["status"] == "completed", state["status"]  # recheck 100 %: drawn again
    await r.update("recheck", actor="supervisor", visited_at=await r.now(), passed=True)


async def escalation(r: Run) -> None:
    """deadline-lights: yellow, red, then every rung up to 问责; too-late extension; done late;
    a newer calendar reaches the running task by `update_calendar` (refused from a unit); the
    first reminder signed for (签收; an unknown one and a second signing refused), the 督办单
    after it neither signed for nor answered by their 反馈时限 (recorded missed)."""
    await r.update("acknowledge", actor="unit.member")
    cal = r.spec.calendar
    assert cal is not None
    later = dt.date(cal.last_year, 6, 1)  # one more day off, after every date of this task
    newer = calendar_from_days(source=cal.source + " + notice", first_year=cal.first_year,
                               last_year=cal.last_year, published=cal.published,
                               days_off=(*cal.days_off, later),
                               working_weekends=cal.working_weekends)
    await r.update("update_calendar", refused=True, actor="unit.member",
                   calendar=newer.model_dump(mode="json"))
    await r.update("update_calendar", actor="office.staff", calendar=newer.model_dump(mode="json"),
                   note="国务院办公厅放假安排通知")
    await r.sleep(r.due() - dt.datetime.fromisoformat(await r.now()) + dt.timedelta(hours=1))
    state = await r.handle.query("state")
    first = state["notices"][0]["step_key"]
    await r.update("sign_notice", refused=True, actor="unit.member", step_key="no-such-notice")
    await r.update("sign_notice", actor="unit.member", step_key=first, note="已收悉")
    await r.update("sign_notice", refused=True, actor="unit.member", step_key=first)
    await r.sleep(70 * DAY)
    await r.update("request_extension", refused=True, actor="unit.member", node="N1",
                   reason="来不及", proposed_due="2099-01-01")
    await r.update("claim", actor="unit.member", node="N1")
    await r.update("accept", actor="supervisor", node="N1")


async def supervision(r: Run) -> None:
    """四不两直: a false claim (虚报 ladder to its end), findings on their rectification ladder
    (every step), rectification refused then passed, a clean inspection confirming a claim."""
    await r.update("claim", actor="unit.member", node="N1", note="已完成")
    await r.sleep(dt.timedelta(hours=2))
    await r.update("inspect", actor="supervisor", inspection_id="r1", visited_at=await r.now(),
                   place="一村党群服务中心", nodes=["N1"], outcome="不达标",
                   findings=[{"severity": "较重", "description": "4户村民不知情", "node": "N1"},
                             {"severity": "一般", "description": "台账不全",
                              "evidence": [{"sha256": SHA, "geo": "30.12,120.5"}]}])
    await r.sleep(40 * DAY)
    state = await r.settle()
    for f in state["findings"]:
        fid = f["finding_id"]
        await r.update("verify_rectification", refused=True, actor="supervisor", finding_id=fid,
                       passed=True)  # nothing reported yet
        await r.update("report_rectification", actor="unit.member", finding_id=fid, note="已整改")
        await r.update("verify_rectification", actor="supervisor", finding_id=fid, passed=False,
                       note="仍缺两户")
        await r.update("report_rectification", actor="unit.member", finding_id=fid,
                       note="补齐", evidence=[{"sha256": SHA}])
        await r.update("verify_rectification", actor="supervisor", finding_id=fid, passed=True)
    await r.update("claim", actor="unit.member", node="N1", note="确已完成")
    await r.sleep(dt.timedelta(hours=1))
    await r.update("inspect", actor="supervisor", inspection_id="r2", visited_at=await r.now(),
                   place="一村", nodes=["N1"], outcome="达标")


async def sanming(r: Run) -> None:
    """三明 blue → orange → red, then done."""
    await r.sleep(r.due() - dt.datetime.fromisoformat(await r.now()) + 20 * DAY)
    await r.update("claim", actor="unit.member", node="N1")
    await r.update("accept", actor="lead.head", node="N1")


async def ladder_13710(r: Run) -> None:
    """13710: the ladder's own nodes (plan 1 day, progress 3 days, done 7 days), each missed
    and escalated to 通报, then closed out (销号)."""
    await r.sleep(20 * DAY)
    await r.update("claim", refused=True, actor="unit.member", node="progress")
    await r.update("progress", actor="unit.member", percent=50, note="进展报告")  # meets it
    for node in r.spec.nodes:
        if node.kind == "milestone":
            await r.update("claim", actor="unit.member", node=node.code)
            await r.update("accept", actor="supervisor", node=node.code)


async def continued(r: Run) -> None:
    """Continue-as-new every few events: the record spans several runs."""
    await r.update("acknowledge", actor="unit.member")
    await r.idle()
    for pct in (10, 20, 30):
        await r.update("progress", actor="unit.member", percent=pct)
        await r.idle()
    await r.signal("progress", {"actor": "unit.member", "percent": 101})
    await r.idle()
    await r.update("claim", actor="unit.member", node="N1")
    await r.idle()
    await r.update("accept", actor="supervisor", node="N1")


# Fixed keys, so a re-recording signs the same way (Ed25519 signatures are deterministic).
WEB = Signer("web", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
FORGER = Signer("web", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
SIGNED_POLICY = AuthPolicy(require_signed=True, trusted=(WEB.trusted(),))


async def signed(r: Run) -> None:
    """A deployment that requires signed commands, across continue-as-new: signed commands are
    accepted with their proof; unsigned, forged, re-used and altered ones are refused."""
    async def send(name: str, payload: dict[str, Any], signer: Signer | None = WEB,
                   refused: bool = False) -> dict[str, Any]:
        if signer is not None:
            payload = signer.sign(r.handle.id, name, payload, await r.env.get_current_time())
        await r.update(name, refused=refused, **payload)
        await r.idle()
        return payload

    await send("acknowledge", {"actor": "unit.member"})
    await send("progress", {"actor": "unit.member", "percent": 10}, signer=None, refused=True)
    await send("progress", {"actor": "unit.member", "percent": 20}, signer=FORGER, refused=True)
    used = await send("progress", {"actor": "unit.member", "percent": 30})
    await r.update("progress", refused=True, **used)  # the same assertion again
    await r.idle()
    await r.update("progress", refused=True, **{**used, "percent": 90})  # another payload
    await r.idle()
    await r.signal("progress", {"actor": "unit.member", "percent": 40})  # unsigned signal
    await r.idle()
    await send("claim", {"actor": "unit.member", "node": "N1"})
    await send("accept", {"actor": "supervisor", "node": "N1"})


Scenario = tuple[Callable[[Run], Awaitable[None]], dict[str, Any], int | None]
SCENARIOS: dict[str, Scenario] = {
    "lifecycle": (lifecycle, {"recheck": 100}, None),
    "escalation": (escalation, {"due_days": (5,), "progress": (100,)}, None),
    "supervision": (supervision, {"due_days": (60,), "progress": (100,)}, None),
    "sanming": (sanming, {"ladder": "sanming", "due_days": (5,), "progress": (100,)}, None),
    "13710": (ladder_13710, {"ladder": "13710", "due_days": None}, None),
    "continued": (continued, {"due_days": (30,), "progress": (100,)}, 3),
    "signed": (signed, {"due_days": (30,), "progress": (100,)}, 4),
}
POLICIES = {"signed": SIGNED_POLICY}


async def drive(env: WorkflowEnvironment, name: str, queue: str = QUEUE) -> str:
    """Run scenario `name` on a worker polling `queue` until its task closes; the task id."""
    func, kw, continue_after = SCENARIOS[name]
    spec = spec_for(await env.get_current_time(), **kw)
    await env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec, continue_after_events=continue_after,
                                    auth=POLICIES.get(name)),
        id=spec.task_id, task_queue=queue, search_attributes=initial_search_attributes(spec))
    await func(Run(env, env.client.get_workflow_handle(spec.task_id), spec))
    result = await asyncio.wait_for(env.client.get_workflow_handle(spec.task_id).result(), 60)
    assert result["status"] == "closed", result
    return spec.task_id


async def save(client: Client, task_id: str, name: str, out: Path) -> list[Path]:
    histories = await run_chain(client, task_id)
    paths = []
    for i, history in enumerate(histories, start=1):
        suffix = f"-run{i}" if len(histories) > 1 else ""
        path = out / f"keytask-{name}{suffix}.json"
        path.write_text(compact(history.to_json()), encoding="utf-8")
        paths.append(path)
    return paths


async def complete(client: Client, task_id: str) -> bool:
    """Every run's history ends with its close event. The time-skipping server sometimes
    leaves the last workflow task of a run that continued as new without its completion and
    close events (the next run is fine): such a history still replays, but CI should keep
    whole ones, so the scenario is run again."""
    chain = await run_chain(client, task_id)
    ends = [h.events[-1].event_type for h in chain]
    return ends == [EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW] * (len(chain) - 1) + [
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED]


def compact(history_json: str) -> str:
    """The same JSON, one event a line: a third smaller than `to_json()`'s indentation, and a
    re-recording still diffs event by event."""
    events = json.loads(history_json)["events"]
    lines = ",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in events)
    return '{"events": [\n' + lines + "\n]}\n"


async def run_chain(client: Client, workflow_id: str) -> list[Any]:
    """Every run of a workflow, oldest first, followed back through continue-as-new."""
    chain: list[Any] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        chain.append(history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
        if run_id is None:
            return chain[::-1]


async def main(names: list[str]) -> None:
    from infra.db.store import open_store
    from worker import running_worker

    env = await start_time_skipping(DEFINITIONS)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/duban.db"
            store = open_store(url)
            async with running_worker(env.client, store, QUEUE):
                for name in names:
                    for stale in OUT.glob(f"keytask-{name}*.json"):
                        stale.unlink()
                    for _attempt in range(5):
                        task_id = await drive(env, name)
                        if await complete(env.client, task_id):
                            break
                    OUT.mkdir(exist_ok=True)
                    paths = await save(env.client, task_id, name, OUT)
                    for path in paths:
                        print(f"{path.relative_to(HERE.parents[1])}: "
                              f"{path.stat().st_size // 1024} KB")
            store.engine.dispose()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or list(SCENARIOS)))
