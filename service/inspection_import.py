"""Bulk import of 四不两直 inspection results from the sheet a team fills in after a round.

One row per finding (问题); rows sharing a task and an inspection number make one inspection.
A row without a finding records an inspection with no problems. Every row gets a verdict:
accepted, rejected (with the reason), or already recorded — so importing the same sheet twice
records no inspection twice.

A refused row leaves the same trace on its task as the command sent by hand would: the task
records a `CommandRejected` (who tried what, and why). A well-formed inspection goes as a
validated update, whose handler records a refusal on the state; a malformed row goes as a
signal, which the workflow parses as this module did and records as malformed. Each import of
a refused row is an attempt of its own, recorded again. Rows naming no existing task, and rows
of one inspection that disagree with each other (no single command to record), are reported
in the verdicts only.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.commands import Rejection, parse_command, size_rejection
from infra.signing import Signer
from infra.temporal.client import command_size

# header (Chinese as printed on the sheet, or English) -> field
COLUMNS: dict[str, str] = {
    "任务ID": "task_id", "task_id": "task_id",
    "检查编号": "inspection_id", "inspection_id": "inspection_id",
    "督查人": "actor", "inspector": "actor", "actor": "actor",
    "检查时间": "visited_at", "visited_at": "visited_at",
    "地点": "place", "place": "place",
    "检查节点": "nodes", "nodes": "nodes",
    "结果": "outcome", "outcome": "outcome",
    "问题编号": "finding_id", "finding_id": "finding_id",
    "严重程度": "severity", "severity": "severity",
    "问题描述": "description", "description": "description",
    "问题节点": "finding_node", "finding_node": "finding_node",
    "证据SHA256": "evidence", "evidence": "evidence",
    "定位": "geo", "geo": "geo",
}
REQUIRED = ("task_id", "inspection_id", "actor", "visited_at", "place", "outcome")


@dataclass
class RowVerdict:
    row: int
    task_id: str
    inspection_id: str
    verdict: str  # accepted | rejected | already recorded
    reason: str = ""


@dataclass
class Group:
    task_id: str
    inspection_id: str
    rows: list[int] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # True when `error` is `parse_command`'s refusal of `payload`: the workflow, parsing the
    # same payload, refuses it for the same reason, so it can be recorded on the task.
    malformed: bool = False


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value).strip()


def read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(sheet row number, field -> text) for every non-empty row of a .csv or .xlsx."""
    if path.suffix.lower() == ".xlsx":
        from openpyxl import load_workbook

        wb = load_workbook(path, read_only=True, data_only=True)
        ws = wb.worksheets[0]
        raw = [[_cell(v) for v in r] for r in ws.iter_rows(values_only=True)]
        wb.close()
    elif path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            raw = [[c.strip() for c in r] for r in csv.reader(fh)]
    else:
        raise ValueError(f"{path}: expected a .csv or .xlsx file")
    if not raw:
        raise ValueError(f"{path}: the sheet is empty")
    headers = [COLUMNS.get(h.strip(), "") for h in raw[0]]
    missing = [c for c in REQUIRED if c not in headers]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} "
                         f"(headers: {', '.join(raw[0])})")
    rows = []
    for number, values in enumerate(raw[1:], start=2):
        if not any(values):
            continue
        rows.append((number, {h: v for h, v in zip(headers, values, strict=False) if h}))
    return rows


def group_rows(rows: list[tuple[int, dict[str, str]]]) -> tuple[list[Group], list[RowVerdict]]:
    """Inspections to send, and the verdicts of rows refused before anything is sent."""
    groups: dict[tuple[str, str], Group] = {}
    blank_rows: list[Group] = []
    refused: list[RowVerdict] = []
    for number, r in rows:
        task_id, iid = r.get("task_id", ""), r.get("inspection_id", "")
        blank = [c for c in REQUIRED if not r.get(c)]
        if blank:
            why = f"row {number}: empty {', '.join(blank)}"
            if not task_id:
                refused.append(RowVerdict(number, task_id, iid, "rejected", why))
                continue
            # what the row does say, as the command it would be: refused for its blanks
            payload = {k: r[k] for k in ("actor", "inspection_id", "visited_at", "place",
                                         "outcome") if r.get(k)}
            blank_rows.append(Group(task_id, iid, [number], payload, error=why))
            continue
        g = groups.get((task_id, iid))
        header = {"actor": r["actor"], "inspection_id": iid, "visited_at": r["visited_at"],
                  "place": r["place"], "outcome": r["outcome"],
                  "nodes": [n.strip() for n in r.get("nodes", "").replace("，", ",").split(",")
                            if n.strip()]}
        if g is None:
            g = groups[(task_id, iid)] = Group(task_id, iid, payload={**header, "findings": []})
        elif {k: g.payload[k] for k in header} != header:
            g.error = (f"row {number}: inspection {iid} rows disagree on inspector, time, "
                       f"place, nodes or outcome")
        g.rows.append(number)
        if r.get("description") or r.get("severity"):
            evidence = [{"sha256": h.strip().lower(), **({"geo": r["geo"]} if r.get("geo") else {})}
                        for h in r.get("evidence", "").replace("，", ",").split(",") if h.strip()]
            finding: dict[str, Any] = {"severity": r.get("severity", ""),
                                       "description": r.get("description", ""),
                                       "evidence": evidence}
            if r.get("finding_id"):
                finding["finding_id"] = r["finding_id"]
            if r.get("finding_node"):
                finding["node"] = r["finding_node"]
            g.payload["findings"].append(finding)
    for g in groups.values():
        too_large = size_rejection("inspect", command_size(g.payload))
        if g.error is None and too_large is not None:
            g.error = too_large.reason  # refused here: nothing that large is sent
        if g.error is None:
            parsed = parse_command("inspect", g.payload)
            if isinstance(parsed, Rejection):
                g.error, g.malformed = parsed.reason, True
    for g in blank_rows:
        # recordable only if the workflow's own parse refuses it too (it lacks a field it needs)
        g.malformed = isinstance(parse_command("inspect", g.payload), Rejection)
    return sorted([*groups.values(), *blank_rows], key=lambda g: g.rows[0]), refused


def _signed(signer: Signer | None, g: Group, now: dt.datetime | None) -> dict[str, Any]:
    return g.payload if signer is None else signer.sign(g.task_id, "inspect", g.payload, now)


async def import_inspections(client: Any, path: Path, *, signer: Signer | None = None,
                             as_actor: str | None = None,
                             now: dt.datetime | None = None) -> list[RowVerdict]:
    """Validate every row, send each inspection as a validated update, report per row; a
    refused row is recorded on its task when the task exists (see the module docstring).

    `signer`: each inspection is signed for its inspector (a front door holding a key).
    `as_actor`: the uploader (the web app's signed-in supervisor): a row naming another
    inspector is refused here and sent nowhere, since nobody may report for someone else.
    `now`: the time signatures are dated (default the wall clock)."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError

    groups, verdicts = group_rows(read_rows(path))
    for g in groups:
        if as_actor is not None and g.payload.get("actor") != as_actor:
            verdicts.extend(RowVerdict(n, g.task_id, g.inspection_id, "rejected", (
                f"the row names inspector {g.payload.get('actor')!r}; signed in as {as_actor!r}, "
                "you may upload only your own inspections")) for n in g.rows)
            continue
        def mark(verdict: str, reason: str = "", g: Group = g) -> None:
            verdicts.extend(RowVerdict(n, g.task_id, g.inspection_id, verdict, reason)
                            for n in g.rows)

        handle = client.get_workflow_handle(g.task_id)
        try:
            state = await handle.query("state")
        except RPCError as exc:
            mark("rejected", g.error or f"unknown task {g.task_id!r}: {exc.message}")
            continue
        if g.error is not None:
            if not g.malformed:
                mark("rejected", g.error)
                continue
            try:
                await handle.signal("inspect", _signed(signer, g, now))
            except RPCError as exc:
                mark("rejected", f"{g.error} (not recorded on the task: {exc.message})")
                continue
            mark("rejected", f"{g.error} (recorded on the task)")
            continue
        if any(i["inspection_id"] == g.inspection_id for i in state.get("inspections", [])):
            mark("already recorded", "this inspection is on the task already; nothing sent")
            continue
        try:
            await handle.execute_update("inspect", _signed(signer, g, now))
        except WorkflowUpdateFailedError as exc:
            # Refused on the task's state, the handler records the attempt before refusing; a
            # refusal by the update's validator (e.g. too large) leaves no record.
            cause = exc.cause
            reason = str(getattr(cause, "message", None) or cause or exc)
            try:
                since = await handle.query("events", state["last_seq"])
            except RPCError:
                since = []
            recorded = any(e["type"] == "CommandRejected" and e["command"] == "inspect"
                           and e["actor"] == g.payload["actor"] for e in since)
            mark("rejected", f"{reason} (recorded on the task)" if recorded else reason)
            continue
        except RPCError as exc:
            mark("rejected", exc.message)
            continue
        mark("accepted")
    return sorted(verdicts, key=lambda v: v.row)
