"""Command fields are strict, command sizes are bounded, and a batch's read model holds only the
rows its events changed (pure domain, no server), and the store applies such rows."""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import commands as c
from domain.evolve import evolve
from domain.projection import ReadModel, project, project_batch, project_changed, touched_rows
from tests.domain_strategies import Scenario, Sim, scenarios

EXAMPLES = int(os.environ.get("DUBAN_PROPERTY_EXAMPLES", "150"))

# --- strict fields --------------------------------------------------------------------------

# Every JSON value that is not an integer: what `percent` must refuse.
not_integers = st.one_of(
    st.booleans(), st.text(max_size=8), st.floats(allow_nan=False), st.none(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
# Every JSON value that is not a boolean: what `approve` and `passed` must refuse.
not_booleans = st.one_of(
    st.integers(), st.sampled_from(["yes", "no", "true", "false", "1", "0", "on", ""]),
    st.text(max_size=8), st.floats(allow_nan=False), st.none(), st.lists(st.booleans(), max_size=2),
)

BOOL_COMMANDS: list[tuple[str, dict[str, Any], str]] = [
    ("decide_extension", {"actor": "lead.head", "node": "N1"}, "approve"),
    ("verify_rectification", {"actor": "supervisor", "finding_id": "F1"}, "passed"),
    ("recheck", {"actor": "supervisor", "visited_at": "2026-10-01T09:00:00+08:00"}, "passed"),
]


def refused(name: str, payload: dict[str, Any]) -> c.Rejection:
    out = c.parse_command(name, payload)
    assert isinstance(out, c.Rejection), f"{name} {payload!r} was accepted as {out!r}"
    assert out.code == "malformed"
    return out


@given(not_integers)
def test_percent_must_be_a_json_integer(value: object) -> None:
    r = refused("progress", {"actor": "unit.member", "percent": value})
    assert r.reason.startswith("progress: percent: ")
    if isinstance(value, bool | str):
        assert "must be a whole number (a JSON integer)" in r.reason


def test_true_is_not_one_percent_and_text_is_not_a_number() -> None:
    assert refused("progress", {"actor": "a", "percent": True}).reason == (
        "progress: percent: must be a whole number (a JSON integer), not the boolean true")
    assert "not a string ('50')" in refused("progress", {"actor": "a", "percent": "50"}).reason
    assert "not a decimal number" in refused("progress", {"actor": "a", "percent": 50.0}).reason


@pytest.mark.parametrize(("name", "base", "field"), BOOL_COMMANDS)
@given(value=not_booleans)
def test_decisions_must_be_json_booleans(name: str, base: dict[str, Any], field: str,
                                          value: object) -> None:
    r = refused(name, {**base, field: value})
    assert f"{field}: must be true or false (a JSON boolean)" in r.reason


def test_yes_is_not_a_boolean() -> None:
    r = refused("decide_extension", {"actor": "lead.head", "node": "N1", "approve": "yes"})
    assert r.reason == ("decide_extension: approve: must be true or false (a JSON boolean), "
                        "not a string ('yes')")


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans()))
def test_a_number_is_not_a_time(value: object) -> None:
    r = refused("recheck", {"actor": "supervisor", "visited_at": value, "passed": True})
    assert "visited_at: must be an ISO 8601 date-time text" in r.reason
    r = refused("request_extension", {"actor": "unit.member", "node": "N1", "reason": "x",
                                      "proposed_due": value})
    assert "proposed_due: must be an ISO 8601 date or date-time text" in r.reason


@given(st.integers(0, 100), st.booleans())
def test_what_the_cli_sends_is_accepted(percent: int, flag: bool) -> None:
    """starter.py sends ints, JSON booleans and ISO texts (after a JSON round trip)."""
    payloads = {
        "progress": {"actor": "unit.member", "percent": percent, "note": ""},
        "decide_extension": {"actor": "lead.head", "node": "N1", "approve": flag,
                             "granted_due": "2026-12-31", "reason": ""},
        "verify_rectification": {"actor": "supervisor", "finding_id": "F1", "passed": flag,
                                 "note": ""},
        "recheck": {"actor": "supervisor", "visited_at": "2026-10-01T01:00:00+00:00",
                    "passed": flag, "nodes": [], "note": ""},
        "inspect": {"actor": "supervisor", "inspection_id": "I1",
                    "visited_at": "2026-10-01T09:00:00+08:00", "place": "村委", "outcome": "达标",
                    "nodes": ["N1"], "findings": []},
        "request_extension": {"actor": "unit.member", "node": "N1", "reason": "雨季",
                              "proposed_due": "2026-12-31T12:00:00+08:00"},
    }
    for name, payload in payloads.items():
        out = c.parse_command(name, json.loads(json.dumps(payload)))
        assert isinstance(out, c.Command), (name, out)
    assert c.parse_command("progress", payloads["progress"]).percent == percent  # type: ignore[union-attr]


def test_lax_parsing_is_kept_for_old_histories_only() -> None:
    """Runs recorded before strict fields replay with the coercions they were decided with."""
    old = c.parse_command("progress", {"actor": "a", "percent": True}, lax=True)
    assert isinstance(old, c.ReportProgress) and old.percent == 1
    assert isinstance(c.parse_command("progress", {"actor": "a", "percent": True}), c.Rejection)


# --- sizes ----------------------------------------------------------------------------------


@given(st.integers(0, c.MAX_COMMAND_BYTES))
def test_commands_up_to_the_limit_may_be_read(size: int) -> None:
    assert c.size_rejection("inspect", size) is None


@given(st.integers(c.MAX_COMMAND_BYTES + 1, 1 << 32))
def test_bigger_commands_are_refused_by_size_with_a_clear_reason(size: int) -> None:
    r = c.size_rejection("inspect", size)
    assert r is not None and r.code == "too_large"
    assert r.reason == (f"inspect: the command is {size} bytes; a command may carry at most "
                        f"{c.MAX_COMMAND_BYTES} bytes (split it, or attach files by their SHA-256)")


# --- the rows a batch carries ----------------------------------------------------------------


def rows(rm: ReadModel) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({i.inspection_id: i for i in rm.inspections}, {f.finding_id: f for f in rm.findings})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_an_event_changes_no_row_it_does_not_name(scn: Scenario) -> None:
    """touched_rows is complete: every inspection/finding row an event changes or adds is one
    it names, so a batch that sends the named rows only leaves no row stale."""
    sim = Sim(scn.spec, scn.start)
    for step in scn.steps:
        sim.tick(sim.now + step.advance, step.draw)
        for template in step.commands:
            sim.send(template.build(sim.now))
    state = None
    for e in sim.events:
        before = project(state) if state is not None else None
        state = evolve(state, e)
        after = project(state)
        ins, fnd = touched_rows(e)
        if before is not None:
            (bi, bf), (ai, af) = rows(before), rows(after)
            assert {k for k in ai if bi.get(k) != ai[k]} <= ins, type(e).__name__
            assert {k for k in af if bf.get(k) != af[k]} <= fnd, type(e).__name__
            assert set(bi) <= set(ai) and set(bf) <= set(af)  # rows are never removed
        part = project_changed(state, ins, fnd)
        assert part.partial and part.task == after.task
        assert rows(part) == tuple({k: v for k, v in r.items() if k in ids}
                                   for r, ids in zip(rows(after), (ins, fnd), strict=True))


def test_a_partial_read_model_does_not_grow_with_the_task() -> None:
    from tests.domain_strategies import build_spec, local

    t0 = local(2026, 3, 2, 9)
    sim = Sim(build_spec(t0, due_days=(30,)), t0)
    findings = tuple(c.FindingInput(finding_id=f"F{i:03d}", severity="一般",
                                    description=f"第{i}项问题：台账不全" * 4) for i in range(300))
    sim.ok(c.RecordInspection(actor="supervisor", inspection_id="I1", visited_at=t0,
                              place="村委", outcome="不达标", findings=findings),
           t0 + dt.timedelta(hours=1))
    whole = len(project(sim.state).model_dump_json())
    events = sim.ok(c.ReportProgress(actor="unit.member", percent=10))
    part = project_batch(sim.state, events)
    assert whole > 50_000  # what every batch carried before
    assert len(part.model_dump_json()) < 4_000 and not part.findings


# --- the store applies a partial read model --------------------------------------------------

def test_the_store_upserts_a_partial_read_model_and_keeps_the_other_rows(store: Any) -> None:
    from infra.db.store import ReadModel as StoreReadModel
    from tests.test_store import T, batch, task_row

    def finding(fid: str, status: str = "open") -> dict[str, Any]:
        return {"finding_id": fid, "inspection_id": "I-1", "severity": "一般",
                "description": f"问题{fid}", "status": status, "deadline": None, "evidence": []}

    inspection = {"inspection_id": "I-1", "inspector": "刘督查",
                  "visited_at": "2026-11-02T02:00:00Z", "place": "村委会", "outcome": "不达标",
                  "nodes": [], "findings_count": 3}
    whole = StoreReadModel(task_row(T, 3), [inspection], [finding(f"F{i}") for i in range(3)])
    assert store.append(T, batch(T, 1, 3), whole).read_model_applied
    part = StoreReadModel(task_row(T, 5, progress=40), [], [finding("F1", "reported")],
                          partial=True)
    assert store.append(T, batch(T, 4, 5), part).read_model_applied
    rows = store.read_model_rows(T)
    assert {f["finding_id"]: f["status"] for f in rows["findings"]} == {
        "F0": "open", "F1": "reported", "F2": "open"}
    assert [i["inspection_id"] for i in rows["inspections"]] == ["I-1"]
    assert (rows["task"]["progress"], rows["task"]["last_seq"]) == (40, 5)
    # idempotent: the same batch again changes nothing
    again = store.append(T, batch(T, 4, 5), part)
    assert (again.appended, again.skipped, again.read_model_applied) == (0, 2, True)
    assert store.read_model_rows(T) == rows
    # a late retry of an older batch does not describe the head: its rows are not applied
    stale = StoreReadModel(task_row(T, 3), [], [finding("F1", "open")], partial=True)
    assert not store.append(T, batch(T, 1, 3), stale).read_model_applied
    assert store.read_model_rows(T) == rows
    # a partial read model ahead of the events is refused, and writes nothing
    with pytest.raises(ValueError, match="head is 5"):
        store.append(T, batch(T, 4, 5), StoreReadModel(task_row(T, 6), [], [], partial=True))
    assert store.read_model_rows(T) == rows
