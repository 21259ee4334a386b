"""`audit show`, `audit rules`, `audit export`, `audit keygen`, `audit checkpoint`,
`audit checkpoint-verify`: the auditor's views of one task, and anchoring the whole record.

    starter.py audit show TASK [--as-of 2026-03-31] [--json]
    starter.py audit rules TASK [--as-of TIME] [--strict] [--json]
    starter.py audit export TASK --format html --out report.html
    starter.py audit keygen --out ~/.duban-audit.key
    starter.py audit checkpoint --key ~/.duban-audit.key --out cp.json
    starter.py audit checkpoint-verify cp.json [--public-key audit.pub]

Exit status: 0 when fine; 1 when a check fails (`rules --strict` with a late or missing rung,
a checkpoint not matching the store); 2 when the command could not run (unknown task, bad
time, unreadable key or checkpoint).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from infra.settings import get_settings

__all__ = ["register"]

JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
AsOfOpt = Annotated[str | None, typer.Option(
    "--as-of", help="an instant: a date (end of that local day), a local time "
                    "2026-03-31T18:00, or a time with offset")]
TaskArg = Annotated[str, typer.Argument(help="task id (plan/task/unit)")]

_VERDICT_STYLE = {"on time": "green", "late": "bold red", "missing": "bold red",
                  "unexpected": "bold red", "early": "bold red", "pending": "yellow",
                  "not due": "dim", "not required": "dim", "open": "red", "claimed": "yellow",
                  "closed": "green"}
_LIGHT_STYLE = {"green": "green", "yellow": "yellow", "red": "bold red"}


def _out() -> Console:
    return Console()


def _fail(msg: str, code: int = 2) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False)
    raise typer.Exit(code)


def _store() -> Any:
    from infra.db.store import open_store

    url = get_settings().database_url
    return open_store(url)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _styled(verdict: str, text: str) -> str:
    style = _VERDICT_STYLE.get(verdict)
    return f"[{style}]{text}[/{style}]" if style else text


def _esc(text: Any) -> str:
    from rich.markup import escape

    return escape("" if text is None else str(text))


# --- show -------------------------------------------------------------------------------------


def _show(task_id: str, as_of: str | None, as_json: bool) -> None:
    from audit.timeline import AuditInputError, fmt_local, show

    try:
        view = show(_store(), task_id, as_of)
    except AuditInputError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(view.to_json())
        return
    out = _out()
    s, spec, tz = view.state, view.spec, view.spec.timezone
    when = (f"as of {fmt_local(view.as_of, tz, seconds=True)}" if view.as_of
            else f"full record, last event {fmt_local(s.last_at, tz, seconds=True)}")
    out.print(f"[bold]{_esc(spec.title)}[/bold] · {_esc(spec.unit.name)} "
              f"[dim]({_esc(task_id)}; {when}, {tz})[/dim]", highlight=False)
    table = Table(title="timeline", title_justify="left", show_lines=False)
    for col, kw in (("#", {"justify": "right"}), ("time", {"no_wrap": True}), ("actor", {}),
                    ("event", {}), ("effect", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for x in view.entries:
        actor = _esc(x.actor) + (f"\n[dim]{_esc(x.proven)}[/dim]" if x.proven else "")
        table.add_row(str(x.seq), x.local, actor, x.type, _esc(x.effect))
    out.print(table)
    light = _LIGHT_STYLE.get(s.light, "")
    out.print(f"state: status [bold]{s.status}[/bold] · light [{light}]{s.light}[/{light}] · "
              f"level {s.level} · progress {s.progress}% · escalations {s.escalations} · "
              f"false reports {s.false_reports} · refused commands {s.rejected_commands} · "
              f"签收 {fmt_local(s.acknowledged_at, tz)}", highlight=False)
    rl, reasons = view.rules_light
    if rl != s.light:
        out.print(f"[yellow]note:[/yellow] by the rules the light at that instant is {rl} "
                  f"({'; '.join(reasons)}); the recorded light is {s.light}", highlight=False)
    nodes = Table(title="nodes", title_justify="left")
    for col in ("node", "title", "status", "due", "claimed", "done", "on time", "fired"):
        nodes.add_column(col)
    for n in s.nodes:
        due = fmt_local(n.due, tz) + (f" (was {fmt_local(n.original_due, tz)})"
                                      if n.due != n.original_due else "")
        nodes.add_row(n.code, _esc(n.title), n.status, due, fmt_local(n.claimed_at, tz),
                      fmt_local(n.done_at, tz),
                      "-" if n.on_time is None else ("yes" if n.on_time else "no"),
                      ", ".join(n.fired) or "-")
    out.print(nodes)
    if s.findings:
        fnd = Table(title="findings", title_justify="left")
        for col in ("finding", "severity", "description", "status", "deadline", "closed"):
            fnd.add_column(col)
        for f in s.findings:
            fnd.add_row(f.finding_id, f.severity, _esc(f.description), f.status,
                        fmt_local(f.deadline, tz), fmt_local(f.closed_at, tz))
        out.print(fnd)


# --- rules ------------------------------------------------------------------------------------


def _rules(task_id: str, as_of: str | None, as_json: bool, strict: bool, grace: int) -> None:
    from audit.rules_check import rules_for_task
    from audit.timeline import AuditInputError, fmt_local

    if grace < 0:
        _fail("--grace must not be negative")
    try:
        report = rules_for_task(_store(), task_id, as_of, dt.timedelta(seconds=grace))
    except AuditInputError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(report.to_json())
    else:
        out = _out()
        tz = report.timezone
        out.print(f"[bold]rules[/bold] {_esc(task_id)} [dim](judged as of "
                  f"{fmt_local(report.as_of, tz, seconds=True)} {tz}; grace {grace}s)[/dim]",
                  highlight=False)
        t = Table(title="ladder rungs", title_justify="left")
        for col in ("target", "step", "required", "happened", "verdict", "note"):
            t.add_column(col, overflow="fold")
        for r in report.rungs:
            req = r.required_at or r.rung_time
            t.add_row(f"{r.target_kind} {_esc(r.target)} #{r.cycle}",
                      f"{_esc(r.title)} (L{r.level})", fmt_local(req, tz, seconds=True),
                      fmt_local(r.fired_at, tz, seconds=True) if r.fired_at else "never",
                      _styled(r.verdict, _esc(r.text)), _esc(r.note))
        out.print(t)
        n = Table(title="node deadlines", title_justify="left")
        for col in ("node", "original due", "due", "ext.", "status", "verdict"):
            n.add_column(col)
        for row in report.nodes:
            n.add_row(row["node"], fmt_local(dt.datetime.fromisoformat(row["original_due"]), tz),
                      row["due_local"], str(row["extensions_granted"]), row["status"],
                      _styled(row["verdict"], _esc(row["text"])))
        out.print(n)
        out.print(f"签收: {_esc(report.acknowledgement['text'])}", highlight=False)
        if report.claims:
            c = Table(title="claims and acceptances", title_justify="left")
            for col in ("node", "claimed", "by", "in time", "outcome"):
                c.add_column(col)
            for row in report.claims:
                c.add_row(row["node"], row["claimed_local"], _esc(row["by"]),
                          "yes" if row["in_time"] else "no", _esc(row["text"]))
            out.print(c)
        if report.extensions:
            e = Table(title="extensions", title_justify="left")
            for col in ("node", "requested", "reason", "decision"):
                e.add_column(col, overflow="fold")
            for row in report.extensions:
                e.add_row(row["node"], row.get("requested_local") or "-",
                          _esc(row.get("reason", "-")), _esc(row["text"]))
            out.print(e)
        if report.rectifications:
            f = Table(title="rectification", title_justify="left")
            for col in ("finding", "severity", "deadline", "status", "verdict"):
                f.add_column(col)
            for row in report.rectifications:
                deadline = (fmt_local(dt.datetime.fromisoformat(row["deadline"]), tz)
                            if row["deadline"] else "-")
                f.add_row(row["finding"], row["severity"], deadline, row["status"],
                          _styled(row["verdict"], _esc(row["text"])))
            out.print(f)
        for fr in report.false_reports:
            out.print(f"虚报 node {fr['node']} (inspection {_esc(fr['inspection'])}): "
                      f"{_esc(fr['text'])}", highlight=False)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())) or "no rungs"
        verdict = ("[green]every rung as the rules required[/green]" if report.ok
                   else f"[bold red]{len(report.problems)} rung(s) late, missing or "
                        f"unexpected[/bold red]")
        out.print(f"{verdict} ({counts})", highlight=False)
    if strict and not report.ok:
        raise typer.Exit(1)


# --- export -----------------------------------------------------------------------------------


def _export(task_id: str, fmt: str, out_path: Path | None, as_of: str | None) -> None:
    from audit.export import build_report, render_html, render_json
    from audit.timeline import AuditInputError

    if fmt not in ("json", "html"):
        _fail(f"--format must be json or html, not {fmt!r}")
    try:
        report = build_report(_store(), task_id, as_of)
    except AuditInputError as exc:
        _fail(str(exc))
    text = render_json(report) if fmt == "json" else render_html(report)
    if out_path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text, encoding="utf-8")
    chain = report["chain"]
    Console(stderr=True).print(
        f"wrote {out_path} ({fmt}, {len(report['timeline'])} events, chain {chain['verdict']}, "
        f"head seq {chain['head_seq']})", highlight=False)


# --- checkpoints ------------------------------------------------------------------------------


def _keygen(out_path: Path, force: bool, as_json: bool) -> None:
    from audit.checkpoint import CheckpointError, fingerprint, generate_key, public_pem

    try:
        key = generate_key(out_path, force=force)
    except (CheckpointError, OSError) as exc:
        _fail(str(exc))
    pub, fpr = public_pem(key), fingerprint(key)
    if as_json:
        _print_json({"private_key_file": str(out_path), "public_key_pem": pub,
                     "fingerprint": fpr})
        return
    out = _out()
    out.print(f"private key written to {out_path} (mode 0600). Keep it off the database "
              f"server; whoever holds it can sign checkpoints.", highlight=False)
    out.print(f"fingerprint: {fpr}", highlight=False)
    out.print(pub.rstrip(), highlight=False)


def _checkpoint(key_path: Path, out_path: Path, note: str, as_json: bool) -> None:
    from audit.checkpoint import (
        CheckpointError,
        key_file_too_open,
        load_private_key,
        make_checkpoint,
        write_checkpoint,
    )

    try:
        key = load_private_key(key_path)
    except CheckpointError as exc:
        _fail(str(exc))
    if key_file_too_open(key_path):
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {key_path} is readable by group "
                                   f"or others; chmod 600 it", highlight=False)
    doc = make_checkpoint(_store(), key, note=note)
    write_checkpoint(doc, out_path)
    summary = {"file": str(out_path), "created_at": doc["created_at"], "tasks": doc["tasks"],
               "events": doc["events"], "merkle_root": doc["merkle_root"],
               "key_fingerprint": doc["key_fingerprint"], "store": doc["store"]}
    if as_json:
        _print_json(summary)
        return
    _out().print(f"checkpoint {out_path}: {doc['tasks']} task(s), {doc['events']} event(s), "
                 f"merkle root {doc['merkle_root']}, signed by {doc['key_fingerprint']}",
                 highlight=False)


def _checkpoint_verify(path: Path, public_key: str | None, as_json: bool, workers: int) -> None:
    from audit.checkpoint import CheckpointError, read_checkpoint, verify_against_checkpoint

    try:
        doc = read_checkpoint(path, public_key)
    except CheckpointError as exc:
        _fail(str(exc))
    report = verify_against_checkpoint(_store(), doc, workers=workers)
    if as_json:
        _print_json({"file": str(path), **report.to_json()})
    else:
        out = _out()
        if public_key is None:
            out.print(f"[yellow]note:[/yellow] signature checked against the key in the file "
                      f"({doc['key_fingerprint']}); pass --public-key to pin the signer",
                      highlight=False)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts().items()))
        if report.ok:
            out.print(f"[green]ok[/green]: the store only grew since the checkpoint of "
                      f"{doc['created_at']} ({counts})", highlight=False)
        else:
            t = Table(title="checkpoint mismatches", title_justify="left")
            for col in ("task", "status", "checkpoint seq", "store seq", "first bad seq",
                        "reason"):
                t.add_column(col, overflow="fold")
            for f in report.failures:
                t.add_row(_esc(f.task_id), f"[bold red]{f.status}[/bold red]",
                          str(f.checkpoint_seq or "-"), str(f.store_seq or "-"),
                          str(f.first_bad_seq or "-"), _esc(f.reason))
            out.print(t)
            out.print(f"[bold red]{len(report.failures)} task(s) do not match the checkpoint"
                      f"[/bold red] ({counts})", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


# --- registration -----------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    @app.command("show")
    def show_cmd(task_id: TaskArg, as_of: AsOfOpt = None, as_json: JsonOpt = False) -> None:
        """The task's timeline and its state as of an instant (the workflow's own fold)."""
        _show(task_id, as_of, as_json)

    @app.command("rules")
    def rules_cmd(
        task_id: TaskArg,
        as_of: AsOfOpt = None,
        as_json: JsonOpt = False,
        strict: Annotated[bool, typer.Option(
            "--strict", help="exit 1 if any rung was late, missing or unexpected")] = False,
        grace: Annotated[int, typer.Option(
            help="seconds a rung may trail its required time and still be on time")] = 60,
    ) -> None:
        """Whether every escalation rung fired when the rules required it; node deadlines,
        签收, claims, extensions, rectification — each with the times the rules named."""
        _rules(task_id, as_of, as_json, strict, grace)

    @app.command("export")
    def export_cmd(
        task_id: TaskArg,
        fmt: Annotated[str, typer.Option("--format", help="json or html")] = "html",
        out_path: Annotated[Path | None, typer.Option("--out", help="file (default: stdout)")] = None,
        as_of: AsOfOpt = None,
    ) -> None:
        """A self-contained report to file: spec, rules in force, timeline, verdicts, state,
        the chain head and its verdict."""
        _export(task_id, fmt, out_path, as_of)

    @app.command("keygen")
    def keygen_cmd(
        out_path: Annotated[Path, typer.Option("--out", help="private key file to create")],
        force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Create the Ed25519 key that signs checkpoints (PEM, mode 0600); prints the public key."""
        _keygen(out_path, force, as_json)

    @app.command("checkpoint")
    def checkpoint_cmd(
        key: Annotated[Path, typer.Option("--key", help="private key file (from audit keygen)")],
        out_path: Annotated[Path, typer.Option("--out", help="checkpoint file to write")],
        note: Annotated[str, typer.Option(help="free text kept in the checkpoint")] = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Sign every task's chain head (seq, hash) and their Merkle root; keep the file
        outside the database."""
        _checkpoint(key, out_path, note, as_json)

    @app.command("checkpoint-verify")
    def checkpoint_verify_cmd(
        path: Annotated[Path, typer.Argument(help="checkpoint file")],
        public_key: Annotated[str | None, typer.Option(
            "--public-key", help="PEM file or sha256: fingerprint of the expected signer")] = None,
        as_json: JsonOpt = False,
        workers: Annotated[int, typer.Option(help="processes for verifying the chains")] = 1,
    ) -> None:
        """Check a signed checkpoint, then that the store only grew since: no task missing,
        none cut short, none rewritten. Exit 1 otherwise."""
        _checkpoint_verify(path, public_key, as_json, workers)
