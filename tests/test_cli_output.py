"""What `starter.py board`, `task list` and `task show` print, as a user at an 80-column
terminal sees it (typer's CliRunner: not a TTY, 80 columns)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from domain import events as ev
from domain.decide import assign, tick
from domain.evolve import evolve
from domain.projection import project
from infra.db.models import TaskRow
from infra.db.store import EventStore, ReadModel
from tests.scenario import make_spec

UTC = dt.UTC


@pytest.fixture
def cli(cli: Any, store: EventStore) -> Any:
    """tests/fixtures_db.py's `cli`, after this module's database is set up."""
    return cli


def row(plan: str, task: str, unit: str, parent: str | None, light: str, status: str = "assigned",
        title: str = "两委增补", next_due: dt.datetime | None = None) -> dict[str, Any]:
    return {"task_id": f"{plan}/{task}/{unit}", "plan_code": plan, "task_code": task,
            "unit_code": unit, "parent_unit": parent, "unit_name": f"{unit}村",
            "township": parent, "township_name": f"{parent}镇" if parent else None,
            "title": title, "lead_unit": "office",
            "ladder": "deadline-lights", "status": status, "light": light, "level": 0,
            "progress": 0, "next_due_at": next_due, "nodes": [], "open_findings": 0,
            "last_seq": 1}


def put(store: EventStore, rows: list[dict[str, Any]]) -> None:
    with store.engine.begin() as conn:
        conn.execute(insert(TaskRow.__table__), rows)


TWO_PLANS = [
    # plan P1: task T1 in two townships, task T2 in one
    row("P1", "T1", "v01", "town1", "red"),
    row("P1", "T1", "v02", "town1", "green", status="closed"),
    row("P1", "T1", "v11", "town2", "yellow"),
    row("P1", "T2", "v01", "town1", "green", status="completed", title="道路硬化"),
    # plan P2 reuses the code T1 for another task: it must not be merged with P1's T1
    row("P2", "T1", "v01", "town1", "red", title="人居环境整治"),
    row("P2", "T1", "v21", "town3", "red", title="人居环境整治"),
    row("P2", "T1", "zzb", None, "green", title="人居环境整治"),  # a county-level unit
]


def test_board_shows_lights_per_township_and_task_for_each_plan(cli: Any,
                                                                store: EventStore) -> None:
    put(store, TWO_PLANS)
    result = cli("board", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    plans = {p["plan_code"]: p for p in doc["plans"]}
    assert set(plans) == {"P1", "P2"}
    p1, p2 = plans["P1"], plans["P2"]
    assert (p1["tasks"], p1["done"], p1["completion"]) == (4, 2, 50.0)
    town = {t["township"]: t for t in p1["townships"]}
    assert {k: (v["tasks"], v["green"], v["yellow"], v["red"], v["done"], v["completion"])
            for k, v in town.items()} == {"town1": (3, 2, 0, 1, 2, 66.7),
                                          "town2": (1, 0, 1, 0, 0, 0.0)}
    by_task = {t["task_code"]: t for t in p1["by_task"]}
    assert (by_task["T1"]["title"], by_task["T1"]["tasks"], by_task["T1"]["red"]) == ("两委增补", 3, 1)
    assert (by_task["T2"]["done"], by_task["T2"]["completion"]) == (1, 100.0)
    (p2_t1,) = p2["by_task"]
    assert (p2_t1["title"], p2_t1["tasks"], p2_t1["red"]) == ("人居环境整治", 3, 2)
    assert {t["township"] for t in p2["townships"]} == {"town1", "town3", None}

    text = cli("board")
    assert text.exit_code == 0, text.output
    out = text.stdout
    # one section per plan, each with its townships and its tasks
    assert out.index("plan P1") < out.index("plan P2")
    p1_text, p2_text = out[out.index("plan P1"):out.index("plan P2")], out[out.index("plan P2"):]
    assert "town1镇 (town1)" in p1_text and "town2镇 (town2)" in p1_text
    assert "town3" not in p1_text and "区县级单位" not in p1_text
    assert "town3镇 (town3)" in p2_text and "区县级单位" in p2_text and "人居环境整治" in p2_text and "道路硬化" not in p2_text
    assert "completion 2/4 = 50.0%" in p1_text and "completion 0/3 = 0.0%" in p2_text

    only = cli("board", "--plan", "P2", "--json")
    assert [p["plan_code"] for p in json.loads(only.stdout)["plans"]] == ["P2"]


def test_board_of_an_empty_store_says_so(cli: Any) -> None:
    result = cli("board")
    assert result.exit_code == 0 and "no tasks" in result.stdout


def test_task_list_shows_next_due_in_local_time_with_its_zone(cli: Any, store: EventStore) -> None:
    due = dt.datetime(2026, 9, 18, 16, 0, tzinfo=UTC)  # 2026-09-19 00:00 in Asia/Shanghai
    put(store, [row("P1", "T1", "v01", "town1", "yellow", next_due=due)])
    text = cli("task", "list")
    assert text.exit_code == 0, text.output
    assert "2026-09-19 00:00 +08:00" in text.stdout
    assert "2026-09-18 16:00" not in text.stdout
    doc = json.loads(cli("task", "list", "--json").stdout)
    assert doc[0]["next_due_at"] == "2026-09-18T16:00:00+00:00"
    assert dt.datetime.fromisoformat(doc[0]["next_due_at"]) == due
    # at 80 columns a long id folds onto more lines, never cut to "demo-…"
    long_id = "demo-djyl-2026/lwzb/t02-v01-long-village-name"
    put(store, [{**row("P1", "T1", "x", "town1", "red"), "task_id": long_id}])
    narrow = cli("task", "list", "--light", "red").stdout
    assert "…" not in narrow
    id_column = "".join(line.split("│")[1].strip() for line in narrow.splitlines()
                        if line.startswith("│"))
    assert long_id in id_column, narrow


def test_task_list_refuses_an_unknown_light_or_status(cli: Any, store: EventStore) -> None:
    put(store, [row("P1", "T1", "v01", "town1", "red")])
    bad = cli("task", "list", "--light", "purple")
    assert bad.exit_code == 2
    assert "purple" in bad.output and "green" in bad.output
    assert cli("task", "list", "--status", "sleeping").exit_code == 2
    good = cli("task", "list", "--light", "red", "--json")
    assert good.exit_code == 0 and len(json.loads(good.stdout)) == 1


def test_task_show_prints_whole_event_times_at_80_columns(cli: Any, store: EventStore) -> None:
    t0 = dt.datetime(2026, 9, 1, 1, 0, 0, 123000, tzinfo=UTC)
    spec = make_spec(t0, due_days=(3,), progress=(100,), plan_code="P9")
    first = assign(spec, t0)
    state = evolve(None, first)
    evts: list[ev.Event] = [first]
    for e in tick(state, t0 + dt.timedelta(days=4, milliseconds=14), None):
        state = evolve(state, e)
        evts.append(e)
    store.append(spec.task_id, [ev.event_json(e) for e in evts])
    result = cli("task", "show", spec.task_id, "--source", "store")
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for e in evts:
        assert ev.event_json(e)["at"] in result.stdout, ev.event_json(e)["at"]
    assert cli("task", "show", spec.task_id, "--source", "nowhere").exit_code == 2


def test_audit_verify_all_shows_its_progress_on_stderr(cli: Any, store: EventStore) -> None:
    t0 = dt.datetime(2026, 9, 1, 1, 0, tzinfo=UTC)
    for i in range(30):
        spec = make_spec(t0, plan_code="P9", code=f"T{i:02d}")
        first = assign(spec, t0)
        rm = project(evolve(None, first))
        store.append(spec.task_id, [ev.event_json(first)],
                     ReadModel(task=rm.task.model_dump(), inspections=[], findings=[]))
    result = cli("audit", "verify", "--all", "--chain-only", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["tasks"] == 30  # stdout stays the verdict
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("verify: ")]
    assert lines[0] == "verify: walking the hash chains of the store…"
    assert lines[1:] == ["verify: 25/30 task(s) checked", "verify: 30/30 task(s) checked"]


def test_an_oversized_command_is_refused_before_anything_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The front door measures the command as the workflow would and refuses it with the size
    and the limit; the Temporal address points at a closed port, so reaching the server would
    be a different error."""
    import starter
    from domain.commands import MAX_COMMAND_BYTES
    from infra.settings import get_settings
    from infra.temporal.devserver import free_port

    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(starter.app, [
            "progress", "p/T1/v01", "--actor", "unit.member", "--percent", "10",
            "--note", "长" * (MAX_COMMAND_BYTES // 3 + 10)])
    finally:
        get_settings.cache_clear()
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert f"a command may carry at most {MAX_COMMAND_BYTES} bytes" in said
    assert "connect" not in said.lower()
