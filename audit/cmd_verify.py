"""`audit verify`, `audit replay`, `audit archive`: the auditor's verdict on the record.

    starter.py audit verify TASK                 # chain + replay of the engine history vs store
    starter.py audit verify --all --checkpoint heads.json
    starter.py audit replay history.json         # a `temporal workflow show --output json` file
    starter.py audit replay --run-id RUN         # an archived history from the store
    starter.py audit archive --all-closed        # archive closed runs' complete histories

Exit status: 0 when everything agrees, 1 on any tampering or divergence (the first bad seq is
named), 2 when the command could not run or could not make the check asked for (bad arguments,
no such task anywhere, Temporal unreachable for --source live, no archive yet of a running task
with --source archive) and found nothing wrong.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from audit.chain_check import verify_store
from audit.checkpoint import load_checkpoint
from infra.settings import get_settings

SourceOpt = Annotated[
    str,
    typer.Option("--source", help="where engine histories come from: auto (Temporal, else the "
                 "archive in the store), live (Temporal only) or archive (the store only)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
FastOpt = Annotated[bool, typer.Option(
    "--fast", help="replay outside the workflow sandbox (about 2.5x faster on long histories; "
    "the default replays in the worker's sandbox)")]

VERDICT_STYLE = {"ok": "green", "tampered": "bold red", "divergent": "bold red",
                 "no-history": "yellow", "no-archive": "yellow"}


def _out() -> Console:
    return Console()


def _err() -> Console:
    return Console(stderr=True)


def _fail(msg: str, code: int = 2) -> NoReturn:
    _err().print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def _store() -> Any:
    from infra.db.store import open_store

    url = get_settings().database_url
    return open_store(url)


async def _client(required: bool) -> Any:
    """A Temporal client, or None when not required and Temporal cannot be reached."""
    from infra.temporal.client import connect

    settings = get_settings()
    try:
        return await asyncio.wait_for(connect(settings), timeout=10)
    except Exception as exc:  # noqa: BLE001 - one clear line for any connection failure
        if required:
            _fail(f"cannot reach Temporal at {settings.temporal_address}: {exc}")
        _err().print(f"[yellow]note:[/yellow] Temporal at {settings.temporal_address} is not "
                     f"reachable ({type(exc).__name__}); replaying archived histories only")
        return None


def _source(value: str) -> Literal["auto", "live", "archive"]:
    if value not in ("auto", "live", "archive"):
        _fail(f"--source must be auto, live or archive, not {value!r}")
    return value  # type: ignore[return-value]


def _checkpoint_heads(path: Path, public_key: str | None) -> dict[str, tuple[int, str]]:
    try:
        heads = (load_checkpoint(path) if public_key is None
                 else load_checkpoint(path, public_key))
    except Exception as exc:  # noqa: BLE001 - a bad or forged checkpoint is a usage error
        _fail(f"checkpoint {path}: {exc}")
    return {str(t): (int(h[0]), str(h[1])) for t, h in heads.items()}


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _runs_cell(verdict: Any) -> str:
    if not verdict.runs:
        return "-"
    sources = sorted({r.source for r in verdict.runs})
    partial = sum(1 for r in verdict.runs if r.close is None)
    text = f"{len(verdict.runs)} ({'+'.join(sources)})"
    return text + (f", {partial} open" if partial else "")


def _print_verdicts(verdicts: list[Any], console: Console) -> None:
    table = Table(title="audit verify", show_lines=False)
    table.add_column("task")
    table.add_column("verdict")
    table.add_column("chain")
    table.add_column("runs")
    table.add_column("stored", justify="right")
    table.add_column("replayed", justify="right")
    table.add_column("first bad seq", justify="right")
    for v in verdicts:
        chain = "-" if v.chain is None else ("ok" if v.chain.ok else f"bad @{v.chain.first_bad_seq}")
        replayed = sum(len(r.events) for r in v.runs)
        table.add_row(v.task_id, f"[{VERDICT_STYLE[v.verdict]}]{v.verdict}[/]", chain,
                      _runs_cell(v), str(v.stored_events), str(replayed) if v.runs else "-",
                      "" if v.first_bad_seq is None else str(v.first_bad_seq))
    console.print(table)
    for v in verdicts:
        if not v.ok:
            console.print(f"[bold]{v.task_id}[/bold]: {v.reason}")
            for d in v.divergences[1:4]:
                label = f"also seq {d.seq}" if d.seq is not None else "also"
                console.print(f"  {label}: {d.kind}: {d.reason}")
        for note in v.notes:
            console.print(f"[dim]{v.task_id}: {note}[/dim]")


# --- verify ----------------------------------------------------------------------------------

PROGRESS_EVERY = 25  # tasks per progress line of `verify --all`


async def _verify_in_slices(task_ids: list[str], show: bool, **kw: Any) -> list[Any]:
    """`verify_tasks`, and with `show` a line on stderr every PROGRESS_EVERY tasks: a run over
    a whole store takes a while, and must show it is alive (stdout stays the verdict)."""
    from audit.replay import verify_tasks

    def progress(done: list[Any]) -> None:
        if len(done) % PROGRESS_EVERY and len(done) != len(task_ids):
            return
        bad = sum(1 for v in done if not v.ok)
        _err().print(f"verify: {len(done)}/{len(task_ids)} task(s) checked"
                     f"{f', {bad} failing' if bad else ''}", highlight=False)

    return await verify_tasks(task_ids, on_verdict=progress if show else None, **kw)


async def _temporal_task_ids(client: Any) -> set[str]:
    """Every KeyTask workflow id Temporal's visibility lists (a KeyTask's id is its task id);
    empty, with a note, where the server keeps no visibility."""
    from audit.replay import task_ids_in_visibility

    try:
        return await task_ids_in_visibility(client)
    except Exception as exc:  # noqa: BLE001 - visibility is one source among several
        _err().print(f"[yellow]note:[/yellow] Temporal's visibility could not be listed "
                     f"({type(exc).__name__}): tasks known only to Temporal are not checked")
        return set()


def verify(
    task: Annotated[str | None, typer.Argument(help="task id (plan/task/unit)")] = None,
    all_tasks: Annotated[bool, typer.Option(
        "--all", help="every task known anywhere: events, read models, archives, notices, "
        "outbox, the checkpoint, Temporal's visibility (when connected)")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="signed checkpoint of chain heads (detects cut-off tails and "
        "re-computed chains)")] = None,
    public_key: Annotated[str | None, typer.Option(
        "--public-key", help="pin the checkpoint's signer (PEM file, hex or sha256: "
        "fingerprint); default: the key embedded in the file")] = None,
    source: SourceOpt = "auto",
    chain_only: Annotated[bool, typer.Option("--chain-only",
                                             help="walk the hash chains, skip the replay")] = False,
    fast: FastOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify tasks: hash chains, a replay of the engine's histories with the current workflow
    code that must reproduce the stored events, every archive's sha256, and the read models
    (tasks, inspections, findings) against the fold of the events. A task with no events that
    still exists elsewhere (read model, archive, notice, checkpoint, Temporal) is a finding.

    Exit 0: everything agrees. Exit 1: a finding (tampered or divergent; the cause first, then
    the first bad seq). Exit 2: nothing found but the check asked for could not be made: no
    such task anywhere, Temporal unreachable with --source live, or no archive yet (a running
    task's history is archived only when a run continues as new or the task closes: verify it
    with --source live or auto; a closed task with no archive is a finding).

    Not covered: events.recorded_at (not hashed); notices and outbox rows (not compared with
    the events); Temporal's search attributes; tasks.updated_at, archives.archived_at; with
    --chain-only and no --checkpoint, a cut-off tail or a recomputed chain."""
    from audit.chain_check import task_sources
    from audit.replay import NOT_COVERED

    if (task is None) == (not all_tasks):
        _fail("give a TASK or --all (not both)")
    src = _source(source)
    heads = _checkpoint_heads(checkpoint, public_key) if checkpoint is not None else {}
    store = _store()
    chains: dict[str, Any] = {}
    if all_tasks:
        _err().print("verify: walking the hash chains of the store…", highlight=False)
        report = verify_store(store, checkpoints=heads or None)
        chains = dict(report.failures)
        elsewhere = task_sources(store)
        task_ids = sorted(set(store.task_ids()) | set(heads) | set(elsewhere))
        from domain.hashchain import ChainVerdict

        for t in task_ids:
            chains.setdefault(t, ChainVerdict(ok=True))
    else:
        assert task is not None
        task_ids = [task]
        elsewhere = None  # looked up by verify_task

    async def run() -> tuple[list[Any], list[Any]]:
        from audit.recording import recording_gaps

        client = None
        if not chain_only and src != "archive":
            client = await _client(required=src == "live")
        if all_tasks and client is not None:
            task_ids[:] = sorted(set(task_ids) | await _temporal_task_ids(client))
        verdicts = await _verify_in_slices(
            task_ids, all_tasks, store=store, client=client, source=src, checkpoints=heads,
            chains=chains, replay=not chain_only, sandboxed=not fast, sources=elsewhere)
        # Events a workflow decided that the store refused for good (never recorded).
        gaps = [] if client is None else await recording_gaps(client, store, task_ids)
        return verdicts, gaps

    verdicts, gaps = asyncio.run(run())
    if task is not None and not (verdicts[0].stored_events or verdicts[0].sources
                                 or verdicts[0].runs or gaps):
        store.engine.dispose()
        _fail(f"no task {task!r}: no events, read model, archive, notice or outbox row, "
              "checkpointed head" + ("" if chain_only or src == "archive"
                                     else " or Temporal workflow"))
    ok = all(v.ok for v in verdicts) and not gaps
    finding = any(v.finding for v in verdicts) or bool(gaps)
    if as_json:
        _print_json({"ok": ok, "tasks": [v.to_json() for v in verdicts],
                     "unrecorded": [g.to_json() for g in gaps],
                     "not_covered": list(NOT_COVERED),
                     "summary": {"tasks": len(verdicts),
                                 "unverified": sum(1 for v in verdicts
                                                   if not v.ok and not v.finding),
                                 "failed": len({v.task_id for v in verdicts if not v.ok}
                                               | {g.task_id for g in gaps})}})
    else:
        _print_verdicts(verdicts, _out())
        for g in gaps:
            _out().print(f"[bold red]unrecorded[/] {g.line}")
        _out().print("[dim]not covered: " + "; ".join(NOT_COVERED) + "[/dim]")
    store.engine.dispose()
    raise typer.Exit(0 if ok else 1 if finding else 2)


# --- replay a history file -------------------------------------------------------------------


def replay(
    history_file: Annotated[Path | None, typer.Argument(
        help="history JSON (`temporal workflow show --output json`, or an archive)")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id",
                                               help="replay this run's archive from the store")] = None,
    task: Annotated[str | None, typer.Option(
        "--task", help="compare with this task's stored events (default: the history's task)")] = None,
    no_store: Annotated[bool, typer.Option("--no-store",
                                           help="check against the history only")] = False,
    fast: FastOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay one engine history with the current workflow code and compare its events with
    the history's record_batch inputs and the store. Exits 1 on any divergence."""
    from audit.replay import compare_runs, history_from_json, make_replayer, replay_histories

    if (history_file is None) == (run_id is None):
        _fail("give a HISTORY file or --run-id (not both)")
    store = None if no_store else _store()
    if history_file is not None:
        try:
            text = history_file.read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"{history_file}: {exc}")
        label = str(history_file)
    else:
        if store is None:
            _fail("--run-id reads the store: drop --no-store")
        record = store.load_archive(run_id)
        if record is None:
            _fail(f"no archived history of run {run_id}")
        if not record.intact:
            _fail(f"the archived history of run {run_id} does not match its sha256", 1)
        text, label = record.history, f"archive of run {run_id}"
    try:
        history = history_from_json(text)
    except Exception as exc:  # noqa: BLE001 - not a history: say so, plainly
        _fail(f"{label} is not a workflow history: {exc}")
    run = asyncio.run(replay_histories([(history, "file")], make_replayer(sandboxed=not fast)))[0]
    task_id = task or run.task_id
    stored = None
    notes = []
    if store is not None and task_id is not None:
        rows = store.load(task_id)
        if rows:
            stored = [r.event for r in rows]
        else:
            notes.append(f"the store has no events of task {task_id!r}: history checks only")
    divergences = compare_runs([run], stored, whole_task=False, task_id=task)
    ok = not divergences
    rng = run.seq_range
    if as_json:
        _print_json({"ok": ok, "history": label, "task_id": task_id, "run": run.to_json(),
                     "compared_with_store": stored is not None,
                     "first_bad_seq": next((d.seq for d in divergences if d.seq is not None), None),
                     "divergences": [d.to_json() for d in divergences], "notes": notes})
    else:
        out = _out()
        table = Table(title="audit replay", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("history", label)
        table.add_row("task", task_id or "?")
        table.add_row("run", f"{run.run_id} ({run.close or 'open'})")
        table.add_row("engine events", str(run.history_events))
        table.add_row("domain events", f"{len(run.events)} (seq {rng[0]}..{rng[1]})" if rng
                      else "0")
        table.add_row("replay", f"failed: {run.failure}" if run.failure
                      else f"{run.seconds:.2f} s with the current workflow code")
        table.add_row("compared with", "the history" + (" and the store" if stored is not None
                                                         else " only"))
        first_bad = next((d.seq for d in divergences if d.seq is not None), None)
        table.add_row("verdict", "[green]ok[/]" if ok else "[bold red]divergent[/]"
                      + (f" at seq {first_bad}" if first_bad is not None else ""))
        out.print(table)
        for d in divergences[:4]:
            out.print(f"seq {d.seq}: {d.kind}: {d.reason}")
        for note in notes:
            out.print(f"[dim]{note}[/dim]")
        if stored is not None and ok:
            out.print(f"{len(run.events)} replayed events equal the store's")
    if store is not None:
        store.engine.dispose()
    raise typer.Exit(0 if ok else 1)


# --- archive ---------------------------------------------------------------------------------


def archive(
    tasks: Annotated[list[str] | None, typer.Argument(help="task ids (their closed runs)")] = None,
    all_closed: Annotated[bool, typer.Option(
        "--all-closed", help="every closed KeyTask run Temporal still has (needs visibility)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Archive the complete engine history of closed runs (replacing a shorter archive of the
    same run only if it is an exact prefix of the complete one)."""
    from audit.replay import archive_closed_runs

    if bool(tasks) == all_closed:
        _fail("give TASK ids or --all-closed (not both)")
    store = _store()

    async def run() -> list[Any]:
        client = await _client(required=True)
        return await archive_closed_runs(client, store, task_ids=tasks or None)

    outcomes = asyncio.run(run())
    ok = not any(o.status == "conflict" for o in outcomes)
    if as_json:
        _print_json({"ok": ok, "runs": [o.to_json() for o in outcomes]})
    else:
        table = Table(title="audit archive")
        for col in ("task", "run", "status", "events", "detail"):
            table.add_column(col)
        for o in outcomes:
            style = {"conflict": "bold red", "superseded": "green", "archived": "green"}.get(
                o.status, "")
            events = (f"{o.events_before} → {o.events_after}" if o.status == "superseded"
                      else str(o.events_after))
            table.add_row(o.task_id, o.run_id[:8] + "…" if o.run_id else "-",
                          f"[{style}]{o.status}[/]" if style else o.status, events, o.detail)
        _out().print(table)
    store.engine.dispose()
    raise typer.Exit(0 if ok else 1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("replay")(replay)
    app.command("archive")(archive)
