"""The auditor's views: state as of an instant, the rules check, the exported report.

The as-of and late-task tests drive real workflows on the time-skipping server and read what
they recorded; the finer rule cases run the domain simulator into a store of each backend.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from audit.chain_check import verify_task_chain
from audit.export import build_report, render_html
from audit.rules_check import check_rules, rules_for_task
from audit.timeline import load_events, parse_as_of, show
from domain import commands as c
from domain import events as ev
from infra.db.store import EventStore
from tests.domain_strategies import Sim, build_spec
from tests.test_keytask_workflow import start, update

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 09:00 in Shanghai


async def settled(store: EventStore, handle: Any, limit: float = 20) -> dict[str, Any]:
    """The workflow's state once the store holds every event it has decided."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        state: dict[str, Any] = await handle.query("state")
        if store.head(handle.id).seq == state["last_seq"]:
            return state
        assert asyncio.get_running_loop().time() < deadline, "the store never caught up"
        await asyncio.sleep(0.05)


def copy_into(store: EventStore, events: list[dict[str, Any]]) -> str:
    task_id = str(events[0]["task_id"])
    store.append(task_id, events)
    return task_id


def sim_events(sim: Sim) -> list[dict[str, Any]]:
    return [ev.event_json(e) for e in sim.events]


# --- as of: the fold at an instant is what the workflow held then -----------------------------

COMPARED = ("status", "light", "level", "progress", "last_seq", "acknowledged_at", "escalations",
            "false_reports", "rejected_commands", "completed_at")


def _node_facts(state: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(n["code"], n["status"], n["due"], n["original_due"], n["cycle"], tuple(n["fired"]),
             n["claimed_at"], n["done_at"], n["on_time"]) for n in state["nodes"]]


def _finding_facts(state: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(f["finding_id"], f["status"], f["deadline"], f["sent_back"], tuple(f["fired"]))
            for f in state["findings"]]


async def test_state_as_of_matches_the_workflow_state_query(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore) -> None:
    handle, spec = await start(ts_env, due_days=(5, 20), progress=(40, 100))
    snapshots: list[dict[str, Any]] = []

    async def snap() -> None:
        snapshots.append(await handle.query("state"))

    await snap()
    await update(handle, "acknowledge", actor="unit.member")
    await snap()
    await ts_env.sleep(dt.timedelta(days=2))
    await update(handle, "progress", actor="unit.member", percent=20)
    await update(handle, "claim", actor="unit.member", node="N1")
    await snap()
    await update(handle, "reject_claim", actor="supervisor", node="N1", reason="材料不全")
    await snap()
    # past N1's due time: yellow, red, the reminder and the 督办单
    await ts_env.sleep(spec.nodes[0].due - await ts_env.get_current_time()
                       + dt.timedelta(days=6))
    await snap()
    await update(handle, "request_extension", actor="unit.member", node="N2", reason="换届推迟",
                 proposed_due=(spec.nodes[1].due + dt.timedelta(days=7)).isoformat())
    await update(handle, "decide_extension", actor="lead.head", node="N2", approve=True)
    await snap()
    now = await ts_env.get_current_time()
    await update(handle, "inspect", actor="supervisor", inspection_id="r1",
                 visited_at=now.isoformat(), place="一村", nodes=[], outcome="基本达标",
                 findings=[{"severity": "一般", "description": "台账不全"}])
    await update(handle, "claim", actor="unit.member", node="N1")
    await update(handle, "accept", actor="supervisor", node="N1")
    await snap()
    await ts_env.sleep(dt.timedelta(days=3))
    await snap()
    await settled(wf_store, handle)

    events = load_events(wf_store, spec.task_id)
    seqs = [s["last_seq"] for s in snapshots]
    # Moments in order, and distinct except that the light change a command causes may land in
    # the snapshot after the command or only in the next one (the clock's pass that follows it),
    # so the last two (three idle days later) may show the same state.
    assert seqs == sorted(seqs) and len(set(seqs[:-1])) == len(seqs) - 1, seqs
    for want in snapshots:
        moment = dt.datetime.fromisoformat(want["last_at"])
        got = show(wf_store, spec.task_id, moment, events=events).to_json()["state"]
        for name in COMPARED:
            assert got[name] == want[name], (name, want["last_seq"])
        assert _node_facts(got) == _node_facts(want)
        assert _finding_facts(got) == _finding_facts(want)
        # the same instant given as the auditor types it, in local time
        local = moment.astimezone(dt.timezone(dt.timedelta(hours=8))).replace(tzinfo=None)
        assert parse_as_of(local.isoformat(), spec.timezone) == moment
    # before the task existed there is no state to show
    with pytest.raises(ValueError, match="did not exist yet"):
        show(wf_store, spec.task_id, events[0].at - dt.timedelta(seconds=1), events=events)


# --- the rules on a late task -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def late_task(ts_env: WorkflowEnvironment, worker: None,
                    wf_store: EventStore) -> dict[str, Any]:
    """A task whose only node is never done: every rung of its ladder fires."""
    handle, spec = await start(ts_env, due_days=(5,), progress=(100,))
    await update(handle, "acknowledge", actor="unit.member")
    await update(handle, "progress", actor="unit.member", percent=30,
                 note="<script>alert('x')</script> & 进展")
    ladder = spec.ladders[spec.ladder]
    last = max(s.after.after(spec.nodes[0].due, spec.timezone)[0] for s in ladder.steps)
    await ts_env.sleep(last - await ts_env.get_current_time() + dt.timedelta(hours=1))
    state = await settled(wf_store, handle)
    assert state["level"] == 5
    return {"task_id": spec.task_id, "spec": spec,
            "events": [s.event for s in wf_store.load(spec.task_id)]}


def test_late_task_every_rung_on_time(late_task: dict[str, Any], wf_store: EventStore) -> None:
    report = rules_for_task(wf_store, late_task["task_id"])
    spec = late_task["spec"]
    steps = [s.code for s in spec.ladders[spec.ladder].steps]
    node_rungs = [r for r in report.rungs if r.target_kind == "node"]
    assert [r.step for r in node_rungs] == steps
    assert {r.verdict for r in node_rungs} == {"on time"}, [r.text for r in node_rungs]
    for r in node_rungs:
        assert r.required_at == r.rung_time == spec.ladders[spec.ladder].steps[
            steps.index(r.step)].after.after(spec.nodes[0].due, spec.timezone)[0]
        assert r.delay is not None and dt.timedelta(0) <= r.delay < dt.timedelta(seconds=1)
    assert report.ok and report.counts == {"on time": len(steps)}
    assert report.nodes[0]["verdict"] == "open" and "overdue by" in report.nodes[0]["text"]
    assert report.acknowledgement["acknowledged"] is True
    # as of a moment between two rungs, the later ones are "not due" and the record is shorter
    order_at = node_rungs[1].required_at
    assert order_at is not None
    early = rules_for_task(wf_store, late_task["task_id"], order_at + dt.timedelta(hours=1))
    assert [r.verdict for r in early.rungs if r.target_kind == "node"] == \
        ["on time", "on time", "not due", "not due", "not due"]


def test_deleted_rung_with_recomputed_chain_is_missing(late_task: dict[str, Any],
                                                       store: EventStore) -> None:
    """Someone deletes the 督办单 and re-chains the rest: the chain verifies, the rules do not."""
    events = [dict(e) for e in late_task["events"]]
    gone = next(i for i, e in enumerate(events)
                if e["type"] == "EscalationFired" and e["step"] == "order")
    del events[gone]
    for i, e in enumerate(events[gone:], start=gone + 1):
        e["seq"] = i
    task_id = copy_into(store, events)
    assert verify_task_chain(store, task_id).ok  # the forged chain is internally consistent
    report = rules_for_task(store, task_id)
    verdicts = {r.step: r.verdict for r in report.rungs if r.target_kind == "node"}
    assert verdicts["order"] == "missing"
    assert [k for k, v in verdicts.items() if v != "on time"] == ["order"]
    assert not report.ok and [p.step for p in report.problems] == ["order"]


# --- finer rule cases, on the domain simulator --------------------------------------------------


def test_done_before_due_needs_no_rung_and_reopened_claim_needs_it_from_then(
        store: EventStore) -> None:
    spec = build_spec(T0, due_days=(5, 10), progress=(50, 100))
    due1, due2 = spec.nodes[0].due, spec.nodes[1].due
    sim = Sim(spec, T0)
    sim.run_until(T0 + dt.timedelta(hours=1))
    sim.ok(c.Acknowledge(actor="unit.member"))
    # N1: claimed before its due time and accepted: no rung required
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), due1 - dt.timedelta(hours=2))
    sim.ok(c.AcceptNode(actor="supervisor", node="N1"), due1 + dt.timedelta(hours=5))
    # N2: claimed before due, the claim rejected two days after: the reminder is required
    # from the rejection, when the node is open again
    sim.run_until(due2 - dt.timedelta(hours=1))
    sim.ok(c.ClaimNode(actor="unit.member", node="N2"))
    rejected_at = due2 + dt.timedelta(days=2)
    sim.run_until(rejected_at)
    sim.ok(c.RejectClaim(actor="supervisor", node="N2", reason="照片不清"))
    sim.run_until(rejected_at + dt.timedelta(minutes=1))
    task_id = copy_into(store, sim_events(sim))

    report = rules_for_task(store, task_id, rejected_at + dt.timedelta(minutes=1))
    n1 = [r for r in report.rungs if r.target == "N1"]
    assert n1 and {r.verdict for r in n1} == {"not required"}
    assert "claimed done" in n1[0].note
    n2 = {r.step: r for r in report.rungs if r.target == "N2"}
    assert n2["remind"].verdict == "on time" and n2["remind"].required_at == rejected_at
    assert n2["remind"].rung_time == due2 and "reopened" in n2["remind"].note
    assert n2["order"].verdict == "not due"
    nodes = {n["node"]: n for n in report.nodes}
    assert nodes["N1"]["verdict"] == "on time" and nodes["N2"]["verdict"] == "open"
    claims = report.claims
    assert [(x["node"], x["outcome"], x["in_time"]) for x in claims] == [
        ("N1", "accepted", True), ("N2", "rejected", True)]
    assert report.ok


def test_extension_moves_the_requirements(store: EventStore) -> None:
    spec = build_spec(T0, due_days=(5,), progress=(100,))
    due = spec.nodes[0].due
    sim = Sim(spec, T0)
    sim.run_until(T0 + dt.timedelta(days=1))
    sim.ok(c.RequestExtension(actor="unit.member", node="N1", reason="选举推迟",
                              proposed_due=due + dt.timedelta(days=4)))
    sim.run_until(T0 + dt.timedelta(days=2))
    sim.ok(c.DecideExtension(actor="lead.head", node="N1", approve=True))
    sim.run_until(due + dt.timedelta(days=4, hours=1))
    task_id = copy_into(store, sim_events(sim))
    report = rules_for_task(store, task_id, due + dt.timedelta(days=4, hours=1))
    cycle0 = [r for r in report.rungs if r.cycle == 0]
    assert {r.verdict for r in cycle0} == {"not required"}
    assert "due time had moved" in cycle0[0].note
    cycle1 = {r.step: r.verdict for r in report.rungs if r.cycle == 1}
    assert cycle1["remind"] == "on time" and cycle1["order"] == "not due"
    (ext,) = report.extensions
    assert ext["in_time"] is True and ext["decision"]["approved"] is True
    assert ext["decision"]["original_due"] == due.isoformat()
    assert ext["decision"]["granted_due"] == (due + dt.timedelta(days=4)).isoformat()


def test_rectification_and_a_rung_fired_late(store: EventStore) -> None:
    spec = build_spec(T0, due_days=(30,), progress=(100,))
    sim = Sim(spec, T0)
    visit = T0 + dt.timedelta(days=1)
    sim.run_until(visit)
    sim.ok(c.RecordInspection(actor="supervisor", inspection_id="r1", visited_at=visit,
                              place="一村", outcome="基本达标",
                              findings=(c.FindingInput(severity="严重", description="公示未上墙"),)))
    finding = sim.state.findings[0]
    assert finding.deadline is not None
    # the worker was down: nothing ticked until two hours after the rectification deadline
    sim.tick(finding.deadline + dt.timedelta(hours=2))
    task_id = copy_into(store, sim_events(sim))
    report = rules_for_task(store, task_id, finding.deadline + dt.timedelta(hours=2))
    (remind,) = [r for r in report.rungs if r.target_kind == "finding" and r.step == "remind"]
    assert remind.verdict == "late" and remind.text == "late by 2h 00m"
    assert not report.ok
    (rect,) = report.rectifications
    assert rect["verdict"] == "open" and rect["severity"] == "严重"
    # within a wider grace it counts as on time
    lenient = rules_for_task(store, task_id, finding.deadline + dt.timedelta(hours=2),
                             grace=dt.timedelta(hours=3))
    assert lenient.ok


def test_a_rung_fired_without_cause_is_unexpected() -> None:
    spec = build_spec(T0, due_days=(5,), progress=(100,))
    sim = Sim(spec, T0)
    sim.run_until(T0 + dt.timedelta(hours=1))
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"))
    sim.ok(c.AcceptNode(actor="supervisor", node="N1"))
    sim.run_out()
    forged = ev.EscalationFired(
        task_id=spec.task_id, seq=sim.state.last_seq + 1, at=spec.nodes[0].due, actor="system",
        step_key="node:N1:0:remind", target_kind="node", target="N1", ladder=spec.ladder,
        step="remind", title="催办提醒", level=1, action="notify", recipients=("unit",),
        demand="", due_since=spec.nodes[0].due, required_at=spec.nodes[0].due)
    report = check_rules([*sim.events, forged], spec.nodes[0].due + dt.timedelta(days=1))
    verdicts = [(r.step, r.verdict) for r in report.rungs]
    assert ("remind", "unexpected") in verdicts and not report.ok


# --- export and the command line ---------------------------------------------------------------


def test_export_json_and_html(late_task: dict[str, Any], wf_store: EventStore) -> None:
    report = build_report(wf_store, late_task["task_id"])
    doc = json.loads(json.dumps(report, ensure_ascii=False))
    assert doc["chain"]["ok"] and doc["chain"]["head_seq"] == len(late_task["events"])
    assert doc["rules"]["ok"] and doc["rules_in_force"]["main_ladder"] == "deadline-lights"
    effects = [x["effect"] for x in doc["timeline"]]
    assert any(e.startswith("督办单 (level 2) issued: node N1 3 working days overdue")
               for e in effects), effects
    assert any(e.startswith("light yellow → red") or e.startswith("light green → red")
               for e in effects)
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # the unit's note, escaped
    assert "督办单 (level 2) issued" in page and late_task["task_id"] in page
    assert "http://" not in page and "https://" not in page and "<link" not in page


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, wf_store: EventStore) -> Any:
    from audit.cli import audit_app
    from infra.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", wf_store.engine.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(audit_app, list(args))
    get_settings.cache_clear()


def test_cli_show_rules_export(cli: Any, late_task: dict[str, Any], tmp_path: Any) -> None:
    tid = late_task["task_id"]
    shown = cli("show", tid, "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["state"]["level"] == 5 and data["timeline"][0]["type"] == "TaskAssigned"
    table = cli("show", tid)
    assert table.exit_code == 0 and "timeline" in table.stdout and "督办单" in table.stdout
    rules = cli("rules", tid, "--json", "--strict")
    assert rules.exit_code == 0, rules.output
    assert json.loads(rules.stdout)["counts"] == {"on time": 5}
    assert "on time" in cli("rules", tid).stdout
    assert cli("show", "no/such/task").exit_code == 2
    assert cli("rules", tid, "--as-of", "not-a-time").exit_code == 2
    out = tmp_path / "r.html"
    done = cli("export", tid, "--format", "html", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "督办单" in out.read_text(encoding="utf-8")
    as_json = cli("export", tid, "--format", "json")
    assert json.loads(as_json.stdout)["task_id"] == tid


def test_cli_rules_strict_fails_on_a_missing_rung(late_task: dict[str, Any], tmp_path: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.cli import audit_app
    from infra.db.engine import make_engine
    from infra.db.migrate import upgrade
    from infra.settings import get_settings

    url = f"sqlite:///{tmp_path / 'forged.db'}"
    upgrade(url)
    forged = EventStore(make_engine(url))
    events = [dict(e) for e in late_task["events"]]
    gone = next(i for i, e in enumerate(events)
                if e["type"] == "EscalationFired" and e["step"] == "talk")
    del events[gone]
    for i, e in enumerate(events[gone:], start=gone + 1):
        e["seq"] = i
    copy_into(forged, events)
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(audit_app, ["rules", late_task["task_id"], "--strict"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "missing" in result.stdout
