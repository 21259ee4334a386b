"""挂图作战 in the web app: the board, the task list, the Gantt view and the Excel export, read
from a store seeded through its own write path (tests/board_seed.py: a known state of five
task instances), signed in with credentials issued by `service.users`.

What a unit member may see is checked on every page: no other unit's task in the board, the
list, a search, the Gantt view or the export."""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import event

from infra.db.store import EventStore, ReadModel, open_store
from service import users
from tests import board_seed as seed
from web import board, board_data, export, gantt
from web.access import can_see, task_url, visible_task
from web.app import create_app
from web.auth import Viewer
from web.context import WebContext

PLAN = seed.PLAN
C01, C02, V01 = f"{PLAN}/T1/c01", f"{PLAN}/T1/c02", f"{PLAN}/T1/v01"
MZJ, T02 = f"{PLAN}/T2/mzj", f"{PLAN}/T2/t02"
ALL = {C01, C02, V01, MZJ, T02}
UNIT_NAMES = {C01: "文化路社区", C02: "北关社区", V01: "河西村", MZJ: "区民政局", T02: "河西镇"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventStore]:
    """The seeded store, once per module and backend (PostgreSQL with
    DUBAN_TEST_POSTGRES_URL, in a schema of its own)."""
    with seed.seeded_store(request.param, tmp_path_factory.mktemp("board")) as st:
        yield st


async def _no_temporal() -> Any:
    raise AssertionError("the board pages never need Temporal")


@pytest.fixture
def client_for(store: EventStore, tmp_path: Path) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(actor: str) -> TestClient:
        app = create_app(WebContext(engine=store.engine, store=store,
                                    evidence_dir=tmp_path / "evidence", connect=_no_temporal,
                                    clock=lambda: seed.NOW))  # sessions keep the real clock
        client = TestClient(app)
        password = users.issue(store.engine, actor, now=dt.datetime.now(dt.UTC),
                               issued_by="test")
        r = client.post("/login", data={"actor": actor, "password": password, "next": "/"},
                        follow_redirects=False)
        assert r.status_code == 303, r.text
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


# --- reading the pages -----------------------------------------------------------------------

CELL = re.compile(r'<td class="cell light-(\w+)( done)?" data-task="([^"]+)"')


def grid_cells(html: str) -> dict[str, str]:
    """task id → light of every coloured cell of the board's grid."""
    return {m.group(3): m.group(1) for m in CELL.finditer(html)}


def stat(html: str, name: str) -> str:
    m = re.search(rf'data-stat="{name}">([^<]*)<', html)
    assert m, name
    return m.group(1)


def row_tasks(html: str) -> list[str]:
    """Task ids of the list rows (task list, overdue list), in order."""
    return re.findall(r'<tr (?:class="late" )?data-task="([^"]+)"', html)


def township_rates(html: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r'<tr data-township="([^"]+)">(.*?)</tr>', html, re.S):
        rate = re.search(r'<span class="rate">([^<]+)</span>', m.group(2))
        assert rate
        out[m.group(1)] = rate.group(1)
    return out


def gantt_tasks(html: str) -> list[str]:
    return [t.split("/tasks/", 1)[1] for t in re.findall(r'<a href="(/tasks/[^"]+)">', html)
            if "/tasks/" in t]


def foreign_names(html: str, visible: set[str]) -> list[str]:
    """Names of units whose tasks the viewer must not see, found in `html`."""
    seen = {UNIT_NAMES[t] for t in visible}
    return [name for t, name in UNIT_NAMES.items()
            if t not in visible and name not in seen and name in html]


# --- the board -------------------------------------------------------------------------------


def test_board_shows_the_known_state_in_colours_and_rates(client_for: Any) -> None:
    html = client_for("office.staff").get("/").text
    assert "挂图测试计划（2026年）" in html
    assert grid_cells(html) == {C01: "green", C02: "red", V01: "green", MZJ: "green",
                                T02: "yellow"}
    assert f'data-task="{C01}"' in html and 'light-green done"' in html  # closed: ✓
    assert [stat(html, k) for k in ("tasks", "green", "yellow", "red", "done", "completion")] \
        == ["5", "3", "1", "1", "1", "20%"]
    # per township (区直单位 = county-level units) and per unit, 完成率 with one decimal
    assert township_rates(html) == {"t01": "50%", "t02": "0%", "-": "0%"}
    assert '<span class="rate">33.3%</span>' in html  # T1: 1 of 3 done
    assert 'data-unit-rate="c01">100%<' in html and 'data-unit-rate="c02">0%<' in html
    # cells link to the task page, slashes and all
    assert f'href="{task_url(C02)}"' in html and task_url(C02) == "/tasks/board-2026/T1/c02"
    # the overdue list: days late and the rung reached (约谈 is level 3 of 亮灯督办)
    overdue = html.split('<section class="overdue">', 1)[1].split("</section>", 1)[0]
    assert row_tasks(overdue) == [C02]
    assert "13 天" in overdue and "第3级 约谈" in overdue and "2026-03-07" in overdue
    # the legend names the lights and the ladder's rungs
    assert "红灯：逾期" in html and "1 催办提醒 → 2 督办单 → 3 约谈" in html


@pytest.mark.parametrize(("query", "expected", "completion"), [
    ("light=red", {C02}, "0%"),
    ("light=green", {C01, V01, MZJ}, "33.3%"),
    ("township=t01", {C01, C02}, "50%"),
    ("township=-", {MZJ}, "0%"),
    ("task=T2", {MZJ, T02}, "0%"),
    ("level=2", {C02}, "0%"),
    ("level=4", set(), "0%"),
    ("township=t02&task=T1", {V01}, "0%"),
    ("light=purple&level=x", ALL, "20%"),  # nonsense is ignored, not refused
])
def test_board_filters(client_for: Any, query: str, expected: set[str], completion: str) -> None:
    html = client_for("office.staff").get(f"/?{query}").text
    assert set(grid_cells(html)) == expected
    assert stat(html, "tasks") == str(len(expected))
    assert stat(html, "completion") == completion
    if expected != ALL:
        assert "全计划：任务 5 项，完成率 20%" in html


def test_board_grid_pages_by_unit(client_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(board_data, "PAGE_SIZE", 2)
    client = client_for("office.staff")
    pages = [grid_cells(client.get(f"/?page={n}").text) for n in (1, 2, 3)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert set().union(*pages) == ALL
    last = client.get("/?page=99").text  # past the end: the last page
    assert grid_cells(last) == pages[2] and 'aria-current="page">3<' in last


def test_sign_in_is_required(store: EventStore, tmp_path: Path) -> None:
    app = create_app(WebContext(engine=store.engine, store=store, evidence_dir=tmp_path,
                                connect=_no_temporal))
    with TestClient(app) as client:
        for path in ("/", "/tasks", "/gantt", "/export.xlsx?light=red"):
            r = client.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


# --- the task list ---------------------------------------------------------------------------


def test_task_list_is_sorted_by_urgency(client_for: Any) -> None:
    html = client_for("office.staff").get("/tasks").text
    # red, yellow, then green by next due (mzj 03-28, v01 04-01), the closed one last
    assert row_tasks(html) == [C02, T02, MZJ, V01, C01]
    assert "逾期 13 天" in html and "第3级 约谈" in html


@pytest.mark.parametrize(("q", "expected"), [
    ("北关", [C02]),  # unit name
    ("河西", [T02, V01]),  # unit or township name
    ("网格化", [T02, MZJ]),  # task title
    ("c01", [C01]),  # unit code
    ("100%", []),  # LIKE wildcards are literal
])
def test_task_list_search(client_for: Any, q: str, expected: list[str]) -> None:
    html = client_for("office.staff").get("/tasks", params={"q": q}).text
    assert row_tasks(html) == expected
    if not expected:
        assert "没有符合条件的任务" in html


def test_task_list_pages_across_urgency_segments(client_for: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(board, "TASK_PAGE_SIZE", 2)
    client = client_for("office.staff")
    pages = [row_tasks(client.get(f"/tasks?page={n}").text) for n in (1, 2, 3)]
    assert pages == [[C02, T02], [MZJ, V01], [C01]]
    first = client.get("/tasks").text
    assert 'href="?plan=board-2026&amp;page=2" rel="next">下一页' in first and "共 5 条" in first
    assert row_tasks(client.get("/tasks?page=7").text) == [C01]
    # filters are kept in the page links
    assert 'href="?plan=board-2026&amp;light=green&amp;page=2"' in client.get(
        "/tasks?light=green").text


def _rows(store: EventStore, n: int) -> list[dict[str, Any]]:
    """`n` board rows of a synthetic plan, with every light, levels, dues and none."""
    base = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        light = ("red", "yellow", "green")[i % 3]
        due = None if i % 7 == 0 else base + dt.timedelta(hours=(i * 37) % 400)
        rows.append({
            "task_id": f"big/T{i % 4}/u{i:03d}", "plan_code": "big", "task_code": f"T{i % 4}",
            "unit_code": f"u{i:03d}" if i % 5 else "u000", "parent_unit": None,
            "unit_name": f"单位{i}", "township": f"t{i % 3}", "township_name": f"镇{i % 3}",
            "title": f"任务{i % 4}", "lead_unit": "lead" if i % 2 else "other",
            "ladder": "deadline-lights", "status": "in_progress", "light": light,
            "level": (i * 5) % 4 if light == "red" else 0, "progress": i % 100,
            "next_due_at": due, "nodes": [], "open_findings": 0, "last_seq": 1,
            "updated_at": base,
        })
    for row in rows:
        store.replace_read_models(row["task_id"], ReadModel(task=row))
    return rows


def _urgency_key(r: dict[str, Any]) -> tuple[Any, ...]:
    due = r["next_due_at"]
    return (("red", "yellow", "green").index(r["light"]), -r["level"], due is None,
            due or dt.datetime.min.replace(tzinfo=dt.UTC), r["task_id"])


@pytest.mark.parametrize("who", ["office", "lead"])
def test_urgency_pages_equal_one_sorted_list(db_url: str, who: str) -> None:
    """The segmented pages (everything) and the sorted ones (a unit's view) both give the
    rows in exactly the urgency order, whatever the page size, on either backend (which
    sort NULLs differently)."""
    st = open_store(db_url)
    try:
        rows = _rows(st, 157)
        viewer = Viewer(who, who, "lead", "牵头单位",
                        frozenset({"office"} if who == "office" else {"head"}), "x")
        mine = [r for r in rows if who == "office" or r["lead_unit"] == "lead"]
        expected = [r["task_id"] for r in sorted(mine, key=_urgency_key)]
        with st.engine.connect() as conn:
            sc = board_data.scope(conn, viewer, {"plan": "big"})
            segs = board_data.segments(conn, sc.cond)
            assert sum(s[3] for s in segs) == len(mine)
            for size in (1, 7, 50, 200):
                got = [r["task_id"] for start in range(0, len(mine), size)
                       for r in board_data.by_urgency(conn, sc, segs, start, size)]
                assert got == expected, size
    finally:
        st.engine.dispose()


# --- the Gantt view --------------------------------------------------------------------------


def test_gantt_draws_today_extensions_and_rungs(client_for: Any) -> None:
    html = client_for("office.staff").get("/gantt").text
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert 'id="today-line"' in svg and "今天 2026-03-20" in svg
    # the extension: original due 03-22, granted 03-28 (asked 03-30): both dates shown
    assert "原定 2026-03-22 → 批准延至 2026-03-28" in svg
    assert 'class="mark-original"' in svg and 'class="mark-granted"' in svg
    # rungs fired on 北关社区's N1: levels 1, 2 and 3 (约谈)
    for level, title in ((1, "催办提醒"), (2, "督办单"), (3, "约谈")):
        assert f'class="rung rung-{level}"' in svg and f"第{level}级 {title}" in svg
    assert 'class="accepted"' in svg  # accepted nodes get a tick
    assert gantt_tasks(svg) == [C02, T02, MZJ, V01, C01]  # urgency order


def test_gantt_reads_a_page_in_a_fixed_number_of_queries(
        client_for: Any, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_for("office.staff")
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        counts = {}
        for size in (1, 5):
            monkeypatch.setattr(gantt, "GANTT_PAGE_SIZE", size)
            statements.clear()
            html = client.get("/gantt").text
            assert len(gantt_tasks(html)) == size
            counts[size] = len([s for s in statements if "events" in s or "tasks" in s])
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    # five tasks over more urgency segments cost a segment query or two, not five per row
    assert counts[1] >= 5 and counts[5] - counts[1] <= 3, counts


def test_gantt_pages_and_filters(client_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gantt, "GANTT_PAGE_SIZE", 2)
    client = client_for("office.staff")
    assert gantt_tasks(client.get("/gantt?page=2").text) == [MZJ, V01]
    assert gantt_tasks(client.get("/gantt?task=T2").text) == [T02, MZJ]
    assert "没有符合条件的任务" in client.get("/gantt?level=5").text


# --- the export ------------------------------------------------------------------------------


def _workbook(client: TestClient, query: str = "") -> Any:
    r = client.get(f"/export.xlsx{query}")
    assert r.status_code == 200
    assert r.headers["content-type"] == export.XLSX
    assert "attachment" in r.headers["content-disposition"]
    return load_workbook(io.BytesIO(r.content))


def _fill(cell: Any) -> str:
    return str(cell.fill.fgColor.rgb)[-6:]


def test_export_holds_the_board_with_light_fills(client_for: Any) -> None:
    wb = _workbook(client_for("office.staff"))
    assert wb.sheetnames == ["挂图", "任务清单", "乡镇完成率"]
    grid = wb["挂图"]
    head = [c.value for c in grid[4]]
    assert head[:4] == ["乡镇（街道）", "责任单位", "T1 两委增补", "T2 网格化管理"]
    rows = {r[1].value: r for r in grid.iter_rows(min_row=5) if r[1].value}
    assert rows["北关社区"][2].value == "红灯 0%" and _fill(rows["北关社区"][2]) == "D93025"
    assert rows["文化路社区"][2].value == "绿灯 完成" and _fill(rows["文化路社区"][2]) == "1E8E3E"
    assert rows["河西镇"][3].value == "黄灯 70%" and _fill(rows["河西镇"][3]) == "F2B400"
    assert rows["区民政局"][2].value is None  # no such task for that unit
    assert rows["文化路社区"][6].value == "100.0%"
    assert "完成率 20.0%" in grid["C2"].value
    tasks = wb["任务清单"]
    listed = {r[11].value: r for r in tasks.iter_rows(min_row=2)}
    assert set(listed) == ALL
    assert listed[C02][6].value == "红灯" and _fill(listed[C02][6]) == "D93025"
    assert listed[C02][7].value == 3 and listed[MZJ][5].value == "推进中"
    towns = {r[0].value: [c.value for c in r] for r in wb["乡镇完成率"].iter_rows(min_row=2)}
    assert towns["城关街道"] == ["城关街道", 2, 1, 0, 1, 1, "50.0%"]


def test_export_keeps_the_filters(client_for: Any) -> None:
    wb = _workbook(client_for("office.staff"), "?township=t01&light=red")
    assert [r[11].value for r in wb["任务清单"].iter_rows(min_row=2)] == [C02]
    assert "乡镇：城关街道" in wb["挂图"]["A2"].value and "灯色：红灯" in wb["挂图"]["A2"].value


# --- what a unit member sees -----------------------------------------------------------------


@pytest.mark.parametrize(("actor", "mine"), [
    ("m.c02", {C02}),  # its own unit's task only
    ("m.mzj", {MZJ, T02}),  # its own, and T2's other unit: mzj leads T2
])
def test_a_member_sees_only_its_units_tasks(client_for: Any, store: EventStore, actor: str,
                                            mine: set[str]) -> None:
    client = client_for(actor)
    board_html = client.get("/").text
    assert set(grid_cells(board_html)) == mine
    assert stat(board_html, "tasks") == str(len(mine))
    assert not foreign_names(board_html, mine)
    assert set(row_tasks(client.get("/tasks").text)) == mine
    for q in ("文化路", "河西村", "两委", "c01", "board"):  # search finds nothing of others'
        found = set(row_tasks(client.get("/tasks", params={"q": q}).text))
        assert found <= mine, q
    gantt_html = client.get("/gantt").text
    assert set(gantt_tasks(gantt_html)) == mine and not foreign_names(gantt_html, mine)
    for query in ("", "?township=t01", "?q=文化路"):
        wb = _workbook(client, query)
        listed = {r[11].value for r in wb["任务清单"].iter_rows(min_row=2)}
        assert listed <= mine
        cells = " ".join(str(c.value) for ws in wb for row in ws.iter_rows() for c in row)
        assert not foreign_names(cells, mine)
    # the filters' choices do not name others' townships either
    if actor == "m.c02":
        assert "河西镇" not in board_html and "区直单位" not in board_html
    # asking for another plan (or none that exists) shows its own
    assert set(grid_cells(client.get("/?plan=nope").text)) == mine
    viewer = Viewer(actor, actor, actor.split(".")[1], "", frozenset({"member"}), "x")
    for task_id in ALL:
        assert can_see(store.engine, viewer, task_id) == (task_id in mine)
        assert (visible_task(store.engine, viewer, task_id) is not None) == (task_id in mine)
    assert not can_see(store.engine, viewer, f"{PLAN}/T9/none")


def test_a_unit_without_tasks_sees_an_empty_board(client_for: Any) -> None:
    client = client_for("m.t01")
    for path in ("/", "/tasks", "/gantt"):
        html = client.get(path).text
        assert "暂无可查看的任务" in html and not foreign_names(html, set())
    wb = _workbook(client)
    assert [r for r in wb["任务清单"].iter_rows(min_row=2)] == []


def test_the_lead_unit_sees_the_tasks_it_leads(client_for: Any) -> None:
    html = client_for("lead.head").get("/").text  # zzb leads T1
    assert set(grid_cells(html)) == {C01, C02, V01}


def test_plan_picker(db_url: str, tmp_path: Path) -> None:
    """Several plans: a picker, the first by default, another by `plan`; a unit's viewer picks
    among its own plans only."""
    st = open_store(db_url)
    try:
        seed.seed(st)
        other: dict[str, Any] = {"task_id": "aa-first/T1/c02", "plan_code": "aa-first",
                 "task_code": "T1", "unit_code": "c02", "parent_unit": "t01",
                 "unit_name": "北关社区", "township": "t01", "township_name": "城关街道",
                 "title": "另一计划的任务", "lead_unit": "zzb", "ladder": "deadline-lights",
                 "status": "in_progress", "light": "red", "level": 0, "progress": 0,
                 "next_due_at": None, "nodes": [], "open_findings": 0, "last_seq": 1,
                 "updated_at": seed.NOW}
        st.replace_read_models(other["task_id"], ReadModel(task=other))
        app = create_app(WebContext(engine=st.engine, store=st, evidence_dir=tmp_path,
                                    connect=_no_temporal, clock=lambda: seed.NOW))
        for actor, default, plans in (("office.staff", {"aa-first/T1/c02"}, 2),
                                      ("m.c02", {"aa-first/T1/c02"}, 2),
                                      ("m.v01", {V01}, 1)):
            with TestClient(app) as client:
                password = users.issue(st.engine, actor, now=dt.datetime.now(dt.UTC),
                                       issued_by="test")
                client.post("/login", data={"actor": actor, "password": password})
                html = client.get("/").text
                assert set(grid_cells(html)) == default
                picker = re.findall(r'<option value="([^"]+)"[^>]*>[^<]*</option>',
                                    html.split('name="plan"', 1)[1].split("</select>", 1)[0]) \
                    if plans > 1 else []
                assert len(picker) == (plans if plans > 1 else 0), actor
                if plans > 1:
                    chosen = client.get(f"/?plan={PLAN}").text
                    assert "挂图测试计划（2026年）" in chosen
                    assert set(grid_cells(chosen)) <= ALL and grid_cells(chosen)
    finally:
        st.engine.dispose()


def test_roles_that_see_everything(store: EventStore) -> None:
    for roles in ({"supervisor"}, {"auditor"}, {"office"}, {"leader"}, {"discipline"}):
        viewer = Viewer("x", "x", "zzb", "", frozenset(roles), "x")
        assert all(can_see(store.engine, viewer, t) for t in ALL)
    nobody = Viewer("x", "x", "", "", frozenset({"member"}), "x")
    assert not any(can_see(store.engine, nobody, t) for t in ALL)


def test_page_links() -> None:
    page = board_data.Page.of("10", total=1000, size=50)
    assert page.links(window=2) == [1, None, 8, 9, 10, 11, 12, None, 20]
    assert (page.first_item, page.last_item) == (451, 500)
    assert board_data.Page.of("0", 0).number == 1 and board_data.Page.of("x", 3).pages == 1
