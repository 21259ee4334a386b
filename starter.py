"""Duban command line: load plans, send commands, read the board, audit.

    python starter.py --help
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import sys
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from domain.calendar import DEFAULT_TZ
from domain.plan import Plan, PlanInvalid, TaskSpec, estimated_calendar_years, resolve_plan
from infra.db.queries import board as board_counts
from infra.db.queries import list_tasks
from infra.settings import get_settings

app = typer.Typer(help="Duban (督办): key tasks as durable workflows.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
plan_app = typer.Typer(help="Plans (重点任务分解清单): load, check, demo.", no_args_is_help=True)
task_app = typer.Typer(help="Tasks: list and show.", no_args_is_help=True)
store_app = typer.Typer(help="The event store: schema, rebuild.", no_args_is_help=True)
user_app = typer.Typer(help="Sign-in to the web app: credentials (口令), sign-ins.",
                       no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(task_app, name="task")
app.add_typer(store_app, name="store")
app.add_typer(user_app, name="user")
keys_app = typer.Typer(help="Signing keys of front doors (身份核验): new, list.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _add_audit() -> None:
    from audit.cli import audit_app

    app.add_typer(audit_app, name="audit")


_add_audit()
out = Console()
err = Console(stderr=True)

LIGHT_STYLE = {"green": "green", "yellow": "yellow", "red": "bold red"}


def _fail(msg: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def _engine() -> Any:
    from infra.db.engine import make_engine
    from infra.db.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    return make_engine(url)


def _store() -> Any:
    from infra.db.store import open_store

    return open_store(get_settings().database_url)


async def _client() -> Any:
    from infra.temporal.client import connect

    try:
        return await asyncio.wait_for(connect(get_settings()), timeout=15)
    except Exception as exc:  # noqa: BLE001 - any connection failure gets one clear line
        _fail(f"cannot reach Temporal at {get_settings().temporal_address}: {exc}")


def _json_default(value: Any) -> Any:
    # Times as ISO 8601 (str() of a datetime puts a space for the "T").
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, ensure_ascii=False, default=_json_default))


def _local(value: dt.datetime | None, tz: str) -> str:
    """An instant in the local time of `tz`, with its offset: 2026-09-19 00:00 +08:00."""
    if value is None:
        return "—"
    local = value.astimezone(ZoneInfo(tz))
    offset = local.isoformat()[-6:]
    return f"{local:%Y-%m-%d %H:%M} {offset}"


class Light(StrEnum):
    green = "green"
    yellow = "yellow"
    red = "red"


class Status(StrEnum):
    assigned = "assigned"
    acknowledged = "acknowledged"
    in_progress = "in_progress"
    completed = "completed"
    closed = "closed"


class ShowSource(StrEnum):
    live = "live"
    store = "store"


# --- plan ------------------------------------------------------------------------------------

def _resolve(path: Path) -> list[TaskSpec]:
    return _read_and_resolve(path)[1]


def _read_and_resolve(path: Path) -> tuple[Plan, list[TaskSpec]]:
    from infra.calendar_source import calendar_for_plan
    from planfiles import load_ladders, read_plan

    try:
        plan = read_plan(path)
        # Each task records the working days of its years: never read again from `holidays`.
        specs = resolve_plan(plan, load_ladders(), calendar_for_plan(plan))
    except PlanInvalid as exc:
        _fail(str(exc))
    except (ValueError, OSError) as exc:
        _fail(f"{path}: {exc}")
    years = estimated_calendar_years(specs)
    if years:
        err.print(f"[yellow]warning:[/yellow] the official holiday schedule for "
                  f"{', '.join(map(str, years))} is not published in the calendar library yet; "
                  f"working days in those years are estimated (statutory holidays, no 调休).")
    return plan, specs


async def _start_all(specs: list[TaskSpec], concurrency: int) -> Counter[str]:
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from workflows.inputs import KeyTaskInput
    from workflows.keytask import WORKFLOW_NAME
    from workflows.search import initial_search_attributes

    client = await _client()
    settings = get_settings()
    from infra.signing import load_policy

    policy = load_policy()  # recorded in each task's input: the task decides by it for life
    counts: Counter[str] = Counter()
    sem = asyncio.Semaphore(concurrency)
    with Progress(TextColumn("[bold]loading[/bold]"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        job = bar.add_task("tasks", total=len(specs))

        async def start(spec: TaskSpec) -> None:
            async with sem:
                try:
                    await client.start_workflow(
                        WORKFLOW_NAME, KeyTaskInput(spec=spec, auth=policy), id=spec.task_id,
                        task_queue=settings.task_queue,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                        search_attributes=initial_search_attributes(spec),
                    )
                    # USE_EXISTING: a task already running answers with its own handle.
                    counts["started_or_running"] += 1
                except WorkflowAlreadyStartedError:
                    counts["already_closed"] += 1
                bar.advance(job)

        await asyncio.gather(*(start(s) for s in specs))
    return counts


@plan_app.command("load")
def plan_load(
    file: Annotated[Path, typer.Argument(help="plan file: .yaml or .xlsx (任务分解清单)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and show; start nothing")] = False,
    concurrency: Annotated[int, typer.Option(help="workflow starts in flight at once")] = 32,
) -> None:
    """Validate a plan and start one KeyTask workflow per (task × responsible unit).

    Safe to run again: a task already running is left as it is (deterministic workflow ids).
    The plan's roster replaces the one stored for it: who may sign in to the web app, as what."""
    plan, specs = _read_and_resolve(file)
    by_task = Counter(s.task_code for s in specs)
    table = Table(title=f"{specs[0].plan_title if specs else file} — {len(specs)} task instances")
    for col in ("task", "title", "units", "ladder", "nodes"):
        table.add_column(col)
    seen: set[str] = set()
    for s in specs:
        if s.task_code in seen:
            continue
        seen.add(s.task_code)
        table.add_row(s.task_code, s.title, str(by_task[s.task_code]), s.ladder,
                      ", ".join(f"{n.code}@{n.due.astimezone(dt.UTC):%m-%d}" for n in s.nodes))
    out.print(table)
    if dry_run:
        out.print("[green]plan is valid[/green] (dry run: nothing started)")
        return
    # The 通讯录 first: a task red at once fires its first notice before the load has ended.
    _store_directory(plan)
    counts = asyncio.run(_start_all(specs, concurrency))
    people = _store_roster(plan)
    out.print(f"[green]loaded[/green] {len(specs)} task instances: "
              f"{counts['started_or_running']} running (new or already running), "
              f"{counts['already_closed']} already closed; roster of {people} "
              f"(sign-in: starter.py user issue ACTOR)")


def _store_roster(plan: Plan) -> int:
    """The roster read model (`people`): the web app's roles and units come from it."""
    from service.users import store_roster

    return store_roster(_engine(), plan.code, plan.roster, {u.code: u.name for u in plan.units},
                        now=dt.datetime.now(dt.UTC))


def _store_directory(plan: Plan) -> int:
    """The plan's 通讯录 (`directory`): where the delivery worker sends its notices."""
    from service.delivery import store_directory

    return store_directory(_engine(), plan, now=dt.datetime.now(dt.UTC))


@plan_app.command("check")
def plan_check(file: Path) -> None:
    """Validate a plan file, print every problem at once, or what it resolves to."""
    from planfiles import read_plan

    specs = _resolve(file)
    plan = read_plan(file)
    kinds = Counter(u.kind for u in plan.units)
    out.print(f"[green]valid[/green]: {plan.code} {plan.title}")
    out.print(f"  units: {len(plan.units)} ({', '.join(f'{k} {n}' for k, n in kinds.items())})")
    out.print(f"  roster: {len(plan.roster)}; tasks: {len(plan.tasks)}; "
              f"task instances: {len(specs)}")
    out.print(f"  delivery addresses (通讯录): {len(plan.directory.units)} units, "
              f"{len(plan.directory.members)} members (every unit has its inbox)")
    per_task = Counter(s.task_code for s in specs)
    for task in plan.tasks:
        out.print(f"    {task.code:8} {per_task[task.code]:3}  {task.title}")


@plan_app.command("convert")
def plan_convert(
    src: Annotated[Path, typer.Argument(help="plan file to read: .yaml or .xlsx")],
    dst: Annotated[Path, typer.Argument(help="plan file to write: .yaml or .xlsx")],
) -> None:
    """Write a plan in the other format (YAML for engineers, XLSX for the task office)."""
    from planfiles import PlanReadError, read_plan, write_plan

    try:
        write_plan(read_plan(src), dst)
    except (PlanReadError, ValueError, OSError) as exc:
        _fail(str(exc))
    out.print(f"wrote {dst}")


@plan_app.command("demo")
def plan_demo(
    out_file: Annotated[Path, typer.Option("--out", help="where to write the demo plan (YAML)")],
    base: Annotated[Path, typer.Option(help="the plan to date relative to now")] = Path(
        "plans/sample-2026.yaml"),
) -> None:
    """Write the demo plan: the sample plan dated relative to now (some nodes past, some due in
    minutes on the minute-scale demo ladder, most in the coming weeks)."""
    from planfiles import read_plan
    from planfiles.demo_plan import demo_plan
    from planfiles.yaml_format import write_plan_yaml

    plan = demo_plan(dt.datetime.now(dt.UTC), read_plan(base))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_plan_yaml(plan, out_file)
    out.print(f"wrote {out_file}")


# --- tasks -----------------------------------------------------------------------------------

@task_app.command("list")
def task_list(
    plan: Annotated[str | None, typer.Option(help="plan code")] = None,
    task: Annotated[str | None, typer.Option(help="task code")] = None,
    unit: Annotated[str | None, typer.Option(help="responsible unit code")] = None,
    parent: Annotated[str | None, typer.Option(help="parent unit (township) code")] = None,
    light: Annotated[Light | None, typer.Option(help="light", case_sensitive=False)] = None,
    status: Annotated[Status | None, typer.Option(help="status", case_sensitive=False)] = None,
    limit: Annotated[int, typer.Option(help="rows at most")] = 200,
    tz: Annotated[str, typer.Option("--tz", help="time zone of the times shown")] = DEFAULT_TZ,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Tasks from the read model, most urgent first."""
    try:
        ZoneInfo(tz)
    except (ValueError, KeyError) as exc:
        _fail(f"unknown time zone {tz!r}: {exc}")
    rows = list_tasks(_engine(), plan_code=plan, task_code=task, unit_code=unit,
                      parent_unit=parent, light=light.value if light else None,
                      status=status.value if status else None, limit=limit)
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} task(s)")
    # The id, then the title under it, folded in a narrow terminal rather than cut: ids are
    # copied from here. The other columns are short and never wrap.
    table.add_column("task id / title", overflow="fold", min_width=12)
    for col in ("light", "status", "lvl", "done"):
        table.add_column(col, no_wrap=True)
    table.add_column("next due", no_wrap=True, min_width=len("2026-09-19 00:00 +08:00"))
    for r in rows:
        table.add_row(f"{r['task_id']}\n[dim]{r['title']}[/]",
                      f"[{LIGHT_STYLE[r['light']]}]{r['light']}[/]", r["status"], str(r["level"]),
                      f"{r['progress']}%", _local(r["next_due_at"], tz))
    out.print(table)


async def _live(task_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    from temporalio.service import RPCError

    client = await _client()
    handle = client.get_workflow_handle(task_id)
    try:
        state = await handle.query("state")
        events = await handle.query("events")
    except RPCError:
        return None
    return state, events


@task_app.command("show")
def task_show(
    task_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    source: Annotated[ShowSource, typer.Option(
        help="live (query the workflow) or store")] = ShowSource.live,
) -> None:
    """A task's state and its events (live from the workflow, or from the store)."""
    from domain.events import parse_event
    from domain.evolve import fold

    state: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    if source is ShowSource.live:
        got = asyncio.run(_live(task_id))
        if got is not None:
            state, events = got
    if state is None:
        stored = _store().load(task_id)
        if not stored:
            _fail(f"no task {task_id!r} (neither a running workflow nor stored events)")
        events = [s.event for s in stored]
        st = fold(parse_event(e) for e in events)
        state = st.model_dump(mode="json", exclude={"spec": {"ladders", "roster"}})
    if as_json:
        _print_json({"state": state, "events": events})
        return
    spec = state["spec"]
    out.print(f"[bold]{spec['title']}[/bold] — {spec['unit']['name']} ({task_id})")
    out.print(f"status {state['status']}, light [{LIGHT_STYLE[state['light']]}]{state['light']}[/],"
              f" level {state['level']}, progress {state['progress']}%")
    # Times are never cut: their columns do not wrap and are as wide as an ISO time; the free
    # text columns fold instead.
    time_width = len("2026-09-19T00:00:00.014000Z")
    nt = Table(title="nodes")
    nt.add_column("node", no_wrap=True)
    nt.add_column("title", overflow="fold")
    nt.add_column("due", no_wrap=True, min_width=time_width)
    nt.add_column("status", no_wrap=True)
    nt.add_column("on time", no_wrap=True)
    for n in state["nodes"]:
        nt.add_row(n["code"], n["title"], n["due"], n["status"], str(n["on_time"]))
    out.print(nt)
    et = Table(title=f"events ({len(events)})")
    et.add_column("seq", no_wrap=True, justify="right")
    et.add_column("at", no_wrap=True, min_width=time_width)
    et.add_column("actor", overflow="fold")
    et.add_column("type", no_wrap=True)
    et.add_column("detail", overflow="fold")
    for e in events:
        detail = {k: v for k, v in e.items()
                  if k not in ("task_id", "seq", "at", "actor", "type", "v", "spec")}
        et.add_row(str(e["seq"]), e["at"], e["actor"], e["type"],
                   json.dumps(detail, ensure_ascii=False)[:90])
    out.print(et)


@app.command("board")
def board(
    plan: Annotated[str | None, typer.Option(help="plan code (default: every plan)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """挂图作战: per plan, the lights (green/yellow/red) and the completion rate of each
    township (乡镇/街道, with its villages) and of each task."""
    plans = board_counts(_engine(), plan_code=plan)
    if as_json:
        _print_json({"plans": plans})
        return
    if not plans:
        out.print(f"no tasks{f' in plan {plan!r}' if plan else ''} in the store")
        return

    def counts(table: Table, name: str, r: dict[str, Any]) -> None:
        table.add_row(name, str(r["tasks"]), f"[green]{r['green']}[/]",
                      f"[yellow]{r['yellow']}[/]", f"[bold red]{r['red']}[/]", str(r["done"]),
                      f"{r['completion']:.1f}%")

    def new_table(title: str, first: str) -> Table:
        table = Table(title=title, title_justify="left")
        table.add_column(first, overflow="fold")
        for col in ("tasks", "green", "yellow", "red", "done", "completion"):
            table.add_column(col, justify="right", no_wrap=True)
        return table

    for i, p in enumerate(plans):
        if i:
            out.print()
        out.rule(f"plan {p['plan_code']}", align="left")
        towns = new_table("per township (乡镇)", "township")
        for r in p["townships"]:
            name = (f"{r['township_name']} ({r['township']})" if r["township"]
                    else "区县级单位 (county level)")
            counts(towns, name, r)
        out.print(towns)
        tasks = new_table("per task", "task")
        for r in p["by_task"]:
            counts(tasks, f"{r['task_code']} {r['title']}", r)
        out.print(tasks)
        out.print(f"completion {p['done']}/{p['tasks']} = {p['completion']:.1f}%")


# --- commands --------------------------------------------------------------------------------

def _evidence(paths: list[Path] | None) -> list[dict[str, str]]:
    items = []
    for p in paths or []:
        if not p.is_file():
            _fail(f"evidence file not found: {p}")
        items.append({"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "name": p.name})
    return items


def _command(name: str, task_id: str, payload: dict[str, Any], as_signal: bool) -> None:
    """Checked locally (a clear error before anything is sent), signed when this process holds a
    key (DUBAN_SIGNING_KEY), sent; prints the task's answer."""
    from infra.signing import load_signer
    from service.commands import CommandRefused, prepare, send_command

    async def go() -> Any:
        return await send_command(await _client(), task_id, name, payload,
                                  signer=load_signer(), as_signal=as_signal)

    try:
        prepare(name, payload)  # before connecting: a wrong command needs no server to say so
        answer = asyncio.run(go())
    except CommandRefused as exc:
        # 2: the command is wrong as written; 1: the task refused it or could not be reached.
        _fail(("refused: " if exc.sent else "") + exc.reason,
              code=1 if exc.sent or exc.code == "unavailable" else 2)
    _print_json(answer)


TaskArg = Annotated[str, typer.Argument(help="task id: PLAN/TASK/UNIT")]
ActorOpt = Annotated[str, typer.Option("--actor", help="who acts (an actor on the plan's roster)")]
SignalOpt = Annotated[bool, typer.Option("--signal", help="send as a signal (fire and forget) "
                                                          "instead of a validated update")]
NoteOpt = Annotated[str, typer.Option(help="free text")]
NodeOpt = Annotated[str, typer.Option("--node", help="node code")]


@app.command("ack")
def ack(task_id: TaskArg, actor: ActorOpt, note: NoteOpt = "", signal: SignalOpt = False) -> None:
    """签收: the responsible unit acknowledges the task."""
    _command("acknowledge", task_id, {"actor": actor, "note": note}, signal)


@app.command("progress")
def progress(task_id: TaskArg, actor: ActorOpt,
             percent: Annotated[int, typer.Option(help="0-100")], note: NoteOpt = "",
             signal: SignalOpt = False) -> None:
    """进度反馈: report progress in whole percent."""
    _command("progress", task_id, {"actor": actor, "percent": percent, "note": note}, signal)


@app.command("claim")
def claim(task_id: TaskArg, actor: ActorOpt, node: NodeOpt, note: NoteOpt = "",
          evidence: Annotated[list[Path] | None, typer.Option(help="file(s); their SHA-256 is sent")] = None,
          signal: SignalOpt = False) -> None:
    """申请销号: claim a node done (a supervisor still has to accept it)."""
    _command("claim", task_id, {"actor": actor, "node": node, "note": note,
                                "evidence": _evidence(evidence)}, signal)


@app.command("accept")
def accept(task_id: TaskArg, actor: ActorOpt, node: NodeOpt, note: NoteOpt = "",
           signal: SignalOpt = False) -> None:
    """验收: accept a claimed node (supervisor or lead unit)."""
    _command("accept", task_id, {"actor": actor, "node": node, "note": note}, signal)


@app.command("reject-claim")
def reject_claim(task_id: TaskArg, actor: ActorOpt, node: NodeOpt,
                 reason: Annotated[str, typer.Option()], signal: SignalOpt = False) -> None:
    """验收不通过: send a claim back."""
    _command("reject_claim", task_id, {"actor": actor, "node": node, "reason": reason}, signal)


@app.command("extend")
def extend(task_id: TaskArg, actor: ActorOpt, node: NodeOpt,
           to: Annotated[str, typer.Option("--to", help="proposed date YYYY-MM-DD or ISO time")],
           reason: Annotated[str, typer.Option()], signal: SignalOpt = False) -> None:
    """申请延期: before the node's due time, with a reason and a proposed date."""
    _command("request_extension", task_id,
             {"actor": actor, "node": node, "proposed_due": to, "reason": reason}, signal)


@app.command("decide-extension")
def decide_extension(
    task_id: TaskArg, actor: ActorOpt, node: NodeOpt,
    approve: Annotated[bool, typer.Option("--approve/--refuse")],
    to: Annotated[str | None, typer.Option("--to", help="grant another date than proposed")] = None,
    reason: Annotated[str, typer.Option()] = "", signal: SignalOpt = False,
) -> None:
    """延期审批: the lead unit approves (possibly with another date) or refuses."""
    _command("decide_extension", task_id, {"actor": actor, "node": node, "approve": approve,
                                           "granted_due": to, "reason": reason}, signal)


def _parse_finding(text: str) -> dict[str, Any]:
    sev, _, desc = text.partition(":")
    return {"severity": sev.strip(), "description": desc.strip()}


@app.command("inspect")
def inspect(
    target: Annotated[str, typer.Argument(help="task id (PLAN/TASK/UNIT), `import` or `template`")],
    file: Annotated[Path | None, typer.Argument(
        help="with `import`: the team's .csv/.xlsx; with `template`: where to write a sample")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="the inspector (督查组)")] = None,
    inspection_id: Annotated[str | None, typer.Option("--id", help="inspection id (unique per task)")] = None,
    place: Annotated[str | None, typer.Option()] = None,
    outcome: Annotated[str | None, typer.Option(help="达标 | 基本达标 | 不达标")] = None,
    visited_at: Annotated[str | None, typer.Option(help="ISO time of the visit; default now")] = None,
    node: Annotated[list[str] | None, typer.Option("--node", help="node(s) inspected")] = None,
    finding: Annotated[list[str] | None, typer.Option(
        "--finding", help="'severity:description', severity 一般|较重|严重")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="with `import`: per-row verdicts as JSON")] = False,
    signal: SignalOpt = False,
) -> None:
    """四不两直: record one inspection's result, or `inspect import FILE` for a whole round.

    The sheet has one row per finding (columns 任务ID, 检查编号, 督查人, 检查时间, 地点, 检查节点,
    结果, 问题编号, 严重程度, 问题描述, 问题节点, 证据SHA256, 定位); each row gets a verdict, and
    importing the same sheet twice records nothing twice. `inspect template FILE` writes a sample
    round for the demo plan (`make demo`), visited just before now, ready to import."""
    if target == "template":
        if file is None:
            _fail("inspect template needs a FILE to write (.xlsx or .csv)")
        _write_sample_round(file)
        return
    if target == "import":
        if file is None:
            _fail("inspect import needs a FILE (.csv or .xlsx)")
        _import_inspections(file, as_json)
        return
    if file is not None:
        _fail(f"unexpected argument {file} (did you mean `inspect import {file}`?)")
    missing = [n for n, v in (("--actor", actor), ("--id", inspection_id), ("--place", place),
                              ("--outcome", outcome)) if not v]
    if missing:
        _fail(f"inspect {target}: missing {', '.join(missing)}")
    visited = visited_at or dt.datetime.now(dt.UTC).isoformat()
    _command("inspect", target, {
        "actor": actor, "inspection_id": inspection_id, "visited_at": visited, "place": place,
        "outcome": outcome, "nodes": node or [],
        "findings": [_parse_finding(f) for f in finding or []],
    }, signal)


def _write_sample_round(file: Path) -> None:
    from infra.settings import REPO_ROOT
    from planfiles import load_ladders, read_plan
    from planfiles.demo_plan import demo_plan
    from service.sample_round import sample_round, write_round

    now = dt.datetime.now(dt.UTC)
    base = read_plan(REPO_ROOT / "plans" / "sample-2026.yaml")
    specs = resolve_plan(demo_plan(now, base), load_ladders())
    rows = sample_round(specs, now)
    try:
        write_round(rows, file)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    out.print(f"wrote {file}: {len(rows)} row(s) for {len({r['任务ID'] for r in rows})} demo "
              f"task(s); import it with `inspect import {file}`")


def _import_inspections(file: Path, as_json: bool) -> None:
    from service.inspection_import import import_inspections

    async def go() -> Any:
        from infra.signing import load_signer

        return await import_inspections(await _client(), file, signer=load_signer())

    try:
        verdicts = asyncio.run(go())
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        _print_json([v.__dict__ for v in verdicts])
    else:
        table = Table(title=f"{file}: {len(verdicts)} row(s)")
        for col in ("row", "task", "inspection", "verdict", "reason"):
            table.add_column(col)
        style = {"accepted": "green", "rejected": "red", "already recorded": "yellow"}
        for v in verdicts:
            table.add_row(str(v.row), v.task_id, v.inspection_id,
                          f"[{style[v.verdict]}]{v.verdict}[/]", v.reason)
        out.print(table)
    counts = Counter(v.verdict for v in verdicts)
    err.print(", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))
    if counts["rejected"]:
        raise typer.Exit(1)


@app.command("rectify")
def rectify(task_id: TaskArg, actor: ActorOpt,
            finding_id: Annotated[str, typer.Option("--finding")], note: NoteOpt = "",
            evidence: Annotated[list[Path] | None, typer.Option()] = None,
            signal: SignalOpt = False) -> None:
    """整改反馈: the unit reports a finding rectified."""
    _command("report_rectification", task_id, {"actor": actor, "finding_id": finding_id,
                                               "note": note, "evidence": _evidence(evidence)},
             signal)


@app.command("verify")
def verify(task_id: TaskArg, actor: ActorOpt,
           finding_id: Annotated[str, typer.Option("--finding")],
           passed: Annotated[bool, typer.Option("--pass/--send-back")], note: NoteOpt = "",
           signal: SignalOpt = False) -> None:
    """整改核查: a supervisor closes (销号) a rectified finding or sends it back."""
    _command("verify_rectification", task_id, {"actor": actor, "finding_id": finding_id,
                                               "passed": passed, "note": note}, signal)


@app.command("recheck")
def recheck(task_id: TaskArg, actor: ActorOpt,
            passed: Annotated[bool, typer.Option("--pass/--fail")],
            visited_at: Annotated[str | None, typer.Option(help="ISO time; default now")] = None,
            node: Annotated[list[str] | None, typer.Option("--node", help="node(s) found not done")] = None,
            note: NoteOpt = "", signal: SignalOpt = False) -> None:
    """回头看: a supervisor's re-inspection of a completed task drawn for it."""
    _command("recheck", task_id, {
        "actor": actor, "visited_at": visited_at or dt.datetime.now(dt.UTC).isoformat(),
        "passed": passed, "nodes": node or [], "note": note}, signal)


# --- users (sign-in to the web app) -------------------------------------------------------------

def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli"


@user_app.command("issue")
def user_issue(
    actor: Annotated[str, typer.Argument(help="an actor on a loaded plan's roster")],
    by: Annotated[str | None, typer.Option("--by", help="who issues it (recorded); "
                                                         "default: the OS user")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Issue a sign-in password to ACTOR and print it, once. Any earlier one is revoked (and
    its sessions end); only a salted hash is stored."""
    from service.users import NotOnRoster, issue, person

    engine = _engine()
    try:
        password = issue(engine, actor, now=dt.datetime.now(dt.UTC), issued_by=by or _os_user())
    except NotOnRoster as exc:
        _fail(str(exc))
    who = person(engine, actor)
    if as_json:
        _print_json({"actor": actor, "password": password,
                     "name": who.name if who else None, "unit": who.unit if who else None,
                     "roles": list(who.roles) if who else []})
        return
    if who is not None:
        out.print(f"{actor}: {who.name}, {who.unit_name} ({who.unit}); roles "
                  f"{', '.join(who.roles)}", highlight=False, markup=False)
    out.print("one-time password (shown only now; hand it over privately):")
    out.print(password, highlight=False, markup=False, soft_wrap=True)


@user_app.command("revoke")
def user_revoke(actor: Annotated[str, typer.Argument(help="whose credential")]) -> None:
    """Revoke ACTOR's credential: its signed-in sessions end at once."""
    from service.users import revoke

    if not revoke(_engine(), actor, now=dt.datetime.now(dt.UTC)):
        _fail(f"{actor!r} has no live credential", code=1)
    out.print(f"revoked the credential of {actor}", highlight=False, markup=False)


@user_app.command("list")
def user_list(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    tz: Annotated[str, typer.Option("--tz", help="time zone of the times shown")] = DEFAULT_TZ,
) -> None:
    """Credentials issued (live and revoked), by actor, newest first."""
    from service.users import list_credentials

    creds = list_credentials(_engine())
    if as_json:
        _print_json([{"id": c.id, "actor": c.actor, "name": c.name, "issued_at": c.issued_at,
                      "issued_by": c.issued_by, "revoked_at": c.revoked_at, "live": c.live}
                     for c in creds])
        return
    table = Table(title=f"{len(creds)} credential(s), {sum(c.live for c in creds)} live")
    # The actor, then the name under it (as in `task list`): folded rather than cut.
    table.add_column("actor / name", overflow="fold", min_width=12)
    table.add_column("issued", no_wrap=True)
    table.add_column("by", overflow="fold")
    table.add_column("status", no_wrap=True)
    for c in creds:
        status = "[green]live[/]" if c.live else f"revoked\n{_local(c.revoked_at, tz)}"
        table.add_row(f"{c.actor}\n[dim]{c.name or '(off the roster)'}[/]",
                      _local(c.issued_at, tz), c.issued_by, status)
    out.print(table)


@user_app.command("sign-ins")
def user_sign_ins(
    actor: Annotated[str | None, typer.Option(help="only this actor's attempts")] = None,
    limit: Annotated[int, typer.Option(help="rows at most")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    tz: Annotated[str, typer.Option("--tz", help="time zone of the times shown")] = DEFAULT_TZ,
) -> None:
    """Recent sign-in attempts to the web app, newest first (failures and throttling too)."""
    from service.users import recent_sign_ins

    rows = recent_sign_ins(_engine(), limit, actor=actor)
    if as_json:
        _print_json([r.__dict__ for r in rows])
        return
    table = Table(title=f"{len(rows)} sign-in attempt(s)")
    table.add_column("at", no_wrap=True)
    table.add_column("actor", overflow="fold")
    table.add_column("ok", no_wrap=True)
    table.add_column("remote", overflow="fold")
    table.add_column("reason", no_wrap=True)
    for r in rows:
        table.add_row(_local(r.at, tz), r.actor, "[green]yes[/]" if r.ok else "[red]no[/]",
                      r.remote, r.reason)
    out.print(table)


# --- web -------------------------------------------------------------------------------------

@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="port; default DUBAN_WEB_PORT (8080)")] = None,
    secure_cookies: Annotated[bool, typer.Option(
        "--secure-cookies", help="mark the session cookie Secure (when served over HTTPS)")] = False,
) -> None:
    """The web app (前台): board, task pages and forms for signed-in users (`user issue`)."""
    import uvicorn

    from infra.db.store import open_store
    from infra.signing import load_signer
    from infra.temporal.client import connect
    from web.app import create_app
    from web.context import WebContext

    settings = get_settings()
    store = open_store(settings.database_url)
    evidence = settings.home / "evidence"
    evidence.mkdir(parents=True, exist_ok=True)
    ctx = WebContext(engine=store.engine, store=store, evidence_dir=evidence,
                     connect=lambda: connect(settings), signer=load_signer(),
                     secure_cookies=secure_cookies)
    uvicorn.run(create_app(ctx), host=host, port=port or settings.web_port)


# --- delivery --------------------------------------------------------------------------------

@app.command("deliver")
def deliver(
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
    interval: Annotated[float, typer.Option(help="seconds between passes")] = 5.0,
    plan: Annotated[list[str] | None, typer.Option("--plan", help="only these plans")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="list the dead letters and exit")] = False,
    requeue_id: Annotated[list[int] | None, typer.Option(
        "--requeue", help="give this dead copy (id) fresh attempts, and exit")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The delivery worker (送达): sends the outbox's 督办单 by e-mail (DUBAN_SMTP_*) and signed
    webhooks, with retries; runs until stopped (SIGINT/SIGTERM) unless --once."""
    import signal
    import threading

    from infra.logging import configure_logging, get_logger
    from service.delivery import DeliveryPolicy, DeliveryWorker, dead_letters, requeue

    engine = _engine()
    if dead:
        rows = dead_letters(engine, plan_code=plan[0] if plan and len(plan) == 1 else None)
        if as_json:
            _print_json(rows)
            return
        table = Table(title=f"dead letters: {len(rows)}")
        for col in ("id", "task", "step", "recipient", "channel", "address", "attempts",
                    "last error"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(str(r["id"]), r["task_id"], r["step_key"], r["recipient"],
                          r["channel"], r["address"], str(r["attempts"]), r["last_error"] or "")
        out.print(table)
        return
    if requeue_id:
        now = dt.datetime.now(dt.UTC)
        for i in requeue_id:
            done = requeue(engine, i, now=now)
            out.print(f"{i}: {'requeued' if done else 'not a dead copy (left as it is)'}")
        return
    configure_logging(get_settings().log_format)
    worker = DeliveryWorker(engine, policy=DeliveryPolicy.from_env(), plans=plan or None)
    if once:
        result = worker.run_once(dt.datetime.now(dt.UTC))
        if as_json:
            _print_json(result.as_dict())
        else:
            out.print(" ".join(f"{k}={v}" for k, v in result.as_dict().items()))
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log = get_logger("duban.delivery")
    log.info("delivery.started", worker=worker.worker_id, interval=interval)
    worker.run_forever(stop, interval=interval)
    log.info("delivery.stopped", worker=worker.worker_id)


# --- store -----------------------------------------------------------------------------------

@store_app.command("init")
def store_init() -> None:
    """Create or upgrade the store's schema (Alembic)."""
    from infra.db.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    out.print(f"store ready: {url.split('@')[-1]}")


@store_app.command("rebuild")
def store_rebuild(
    task: Annotated[list[str] | None, typer.Option("--task", help="only these task ids")] = None,
    check: Annotated[bool, typer.Option("--check", help="compare only; write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
) -> None:
    """Rebuild the read models (tasks, inspections, findings) from the events alone.

    --check compares them with the stored rows instead and exits 1 on any difference."""
    from audit.rebuild import rebuild

    results = rebuild(_store(), task or None, check=check)
    bad = [r for r in results if not r.ok]
    if as_json:
        sys.stdout.write(json.dumps({"check": check, "tasks": len(results), "ok": not bad,
                                     "results": [r.to_json() for r in results]},
                                    ensure_ascii=False, indent=2) + "\n")
    else:
        for r in results:
            if r.error:
                err.print(f"[red]{r.task_id}[/red]: {r.error}", highlight=False)
            elif r.differences:
                verb = "rebuilt" if r.written else "differs"
                style = "yellow" if r.written else "red"
                out.print(f"[{style}]{r.task_id}[/{style}] {verb}:", highlight=False)
                for d in r.differences:
                    out.print(f"  {d}", highlight=False, markup=False)
        written = sum(r.written for r in results)
        out.print(f"{len(results)} task(s): {len(bad)} with problems"
                  + ("" if check else f", {written} rewritten"), highlight=False)
    if bad:
        raise typer.Exit(1)


# --- signing keys --------------------------------------------------------------------------

def _keys_dir() -> Path:
    return get_settings().home / "keys"


@keys_app.command("new")
def keys_new(
    sender: Annotated[str, typer.Argument(help="the front door's name, e.g. web or office-cli")],
    out_dir: Annotated[Path | None, typer.Option("--dir", help="where the key files go "
                                                 "(default: $DUBAN_HOME/keys)")] = None,
) -> None:
    """A new Ed25519 key for SENDER: the private key to SENDER.pem (mode 600; give its path to
    that front door as DUBAN_SIGNING_KEY), the public key added to trusted.json (give its path
    to `plan load` as DUBAN_TRUSTED_KEYS: tasks started then trust it)."""
    from pydantic import ValidationError

    from infra.signing import new_signer, trust, write_key

    folder = out_dir or _keys_dir()
    try:
        signer = new_signer(sender)
        trusted = signer.trusted()
    except ValidationError:
        _fail(f"sender {sender!r}: letters, digits, '.', '_' and '-' only (at most 64)")
    key_path = folder / f"{sender}.pem"
    if key_path.exists():
        _fail(f"{key_path} exists: a key is never overwritten (remove it first to rotate)")
    write_key(signer, key_path)
    trust(folder / "trusted.json", trusted)
    out.print(f"private key : {key_path}", highlight=False, markup=False)
    out.print(f"trusted     : {folder / 'trusted.json'} (sender {sender}, key "
              f"{signer.fingerprint})", highlight=False, markup=False)


@keys_app.command("list")
def keys_list(
    file: Annotated[Path | None, typer.Argument(help="trusted-keys file (default: "
                                                "$DUBAN_TRUSTED_KEYS or $DUBAN_HOME/keys/trusted.json)")] = None,
) -> None:
    """The senders a trusted-keys file trusts, with their key fingerprints."""
    import os

    from infra.signing import read_trusted

    path = file or Path(os.environ.get("DUBAN_TRUSTED_KEYS") or _keys_dir() / "trusted.json")
    if not path.exists():
        _fail(f"{path}: no trusted-keys file")
    for k in read_trusted(path):
        out.print(f"{k.sender}\t{k.fingerprint()}", highlight=False, markup=False)


def main() -> None:
    """The command line. The process ends through `run_and_exit`: a command that used the
    Temporal client could otherwise abort during interpreter finalization (exit 134)."""
    from infra.process_exit import run_and_exit

    run_and_exit(app)


if __name__ == "__main__":
    main()
