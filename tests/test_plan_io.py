"""Plans on disk (YAML and the office's XLSX), the sample plan, the demo plan, and the plan
resolution rules they rely on (working days on China's official calendar, end-of-local-day)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook

from domain.calendar import add_working_days, end_of_local_day, is_working_day, published_years
from domain.ladder import Ladder
from domain.plan import (
    NodeSpec,
    Plan,
    RecheckPolicy,
    ResolvedNode,
    TaskDef,
    Unit,
    estimated_calendar_years,
    resolve_plan,
    validate_plan,
)
from planfiles import PlanReadError, load_plan, read_plan
from planfiles.demo_plan import DEMO_LADDER, demo_plan
from planfiles.ladders import LADDER_DIR, load_ladders
from planfiles.xlsx_format import plan_to_xlsx_bytes, read_plan_xlsx, write_plan_xlsx
from planfiles.yaml_format import write_plan_yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_YAML = ROOT / "plans" / "sample-2026.yaml"
SAMPLE_XLSX = ROOT / "plans" / "sample-2026.xlsx"
UTC = dt.UTC
CST = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture(scope="module")
def ladders() -> dict[str, Ladder]:
    return load_ladders()


@pytest.fixture(scope="module")
def sample() -> Plan:
    return read_plan(SAMPLE_YAML)


# ---------------------------------------------------------------------------------------------
# The sample plan


def test_sample_yaml_and_xlsx_are_the_same_plan(sample: Plan) -> None:
    assert read_plan(SAMPLE_XLSX) == sample
    assert read_plan_xlsx(SAMPLE_XLSX) == sample


def test_committed_xlsx_is_current(sample: Plan) -> None:
    """plans/sample-2026.xlsx is exactly what write_plan_xlsx makes of the YAML (regenerate with
    `starter.py plan convert plans/sample-2026.yaml plans/sample-2026.xlsx`)."""
    assert plan_to_xlsx_bytes(sample) == SAMPLE_XLSX.read_bytes()


def test_sample_validates_cleanly(sample: Plan, ladders: dict[str, Ladder]) -> None:
    assert validate_plan(sample, ladders) == []
    assert load_plan(SAMPLE_YAML, ladders) == sample
    assert load_plan(SAMPLE_XLSX, ladders) == sample
    assert sample.code == "djyl-2026"
    assert sample.timezone == "Asia/Shanghai"
    assert sample.start == dt.date(2026, 11, 2)


def test_sample_units_and_roster(sample: Plan) -> None:
    kinds = Counter(u.kind for u in sample.units)
    assert kinds["township"] >= 4
    assert kinds["village"] + kinds["community"] >= 24
    assert kinds["office"] >= 2 and kinds["department"] >= 4
    units = {u.code: u for u in sample.units}
    for t in (u for u in sample.units if u.kind == "township"):
        under = [u for u in sample.units if u.parent == t.code]
        assert len(under) >= 6, t.name
        assert all(u.kind in ("village", "community") for u in under)
    roles = Counter(r for m in sample.roster for r in m.roles)
    for role in (
        "office",
        "supervisor",
        "auditor",
        "leader",
        "discipline",
        "head",
        "member",
        "lead",
    ):
        assert roles[role] >= 1, role
    assert roles["supervisor"] >= 2
    for u in sample.units:
        if u.kind in ("township", "village", "community"):
            people = [m for m in sample.roster if m.unit == u.code]
            assert any("head" in m.roles for m in people), u.name
            assert len(people) >= 2, u.name
    for m in sample.roster:
        assert m.actor.isascii() and m.unit in units
        assert not m.name.isascii()


def test_sample_resolves_to_expected_instances(sample: Plan, ladders: dict[str, Ladder]) -> None:
    specs = resolve_plan(sample, ladders)
    per_task = Counter(s.task_code for s in specs)
    by_code = {t.code: t for t in sample.tasks}
    n_townships = sum(u.kind == "township" for u in sample.units)
    n_villages = sum(u.kind == "village" for u in sample.units)

    lwzb = [s for s in specs if s.task_code == "lwzb"]
    assert len(lwzb) >= 24
    assert {s.unit.kind for s in lwzb} == {"village", "community"}
    assert per_task["bzfg"] == n_townships
    assert per_task["wgh"] == n_villages
    for code in ("jxzx", "zhpt", "pzgb"):
        assert per_task[code] == n_townships
    assert len(specs) == 82
    assert len({s.task_id for s in specs}) == len(specs)

    for t in sample.tasks:
        assert t.standard and t.lead_unit
        if t.nodes:
            assert t.nodes[-1].planned_progress == 100
    assert "100" in by_code["jxzx"].standard and "120" in by_code["jxzx"].standard
    assert "140" in by_code["jxzx"].standard
    # 13710: no nodes of its own; the ladder's obligations run from the plan's start
    q = by_code["qzwt"]
    assert q.ladder == "13710" and not q.nodes and not q.major
    (q_spec,) = [s for s in specs if s.task_code == "qzwt"]
    start = dt.datetime(2026, 11, 2, tzinfo=CST)
    assert [(n.code, n.due) for n in q_spec.nodes] == [
        ("plan", start + dt.timedelta(days=1)),
        ("progress", start + dt.timedelta(days=3)),
        ("done", start + dt.timedelta(days=7)),
    ]
    # 三明, a major item starting at the orange warning
    z = by_code["zhpt"]
    assert z.ladder == "sanming" and z.major and z.start_level == 2
    # "X月10日前" / "X月31日前": the end of that local day
    bzfg = next(s for s in specs if s.task_code == "bzfg")
    assert bzfg.nodes[-1].due == dt.datetime(2026, 12, 10, 16, tzinfo=UTC)
    # 10 working days from Mon 2026-11-02: Mon 11-16
    assert bzfg.nodes[0].due == end_of_local_day(dt.date(2026, 11, 16))
    # 公示: 5 working days after the election on Fri 12-18 → Fri 12-25
    gs = next(n for n in lwzb[0].nodes if n.code == "gs")
    assert gs.due == dt.datetime(2026, 12, 25, 16, tzinfo=UTC)
    assert gs.calendar_estimated == ()
    # a working-day count in 2027 is estimated until the State Council publishes the notice
    assert 2027 not in published_years()
    assert estimated_calendar_years(specs) == [2027]


def test_sample_node_dates_fall_in_the_planned_window(
    sample: Plan, ladders: dict[str, Ladder]
) -> None:
    dues = {n.due for s in resolve_plan(sample, ladders) for n in s.nodes}
    assert min(dues) >= dt.datetime(2026, 11, 2, tzinfo=CST)
    assert max(dues) <= end_of_local_day(dt.date(2027, 3, 31))
    dec = [d for d in dues if d <= end_of_local_day(dt.date(2026, 12, 31))]
    assert len(dec) >= 10
    today = dt.datetime(2026, 11, 23, tzinfo=CST)
    assert 0 < sum(d < today for d in dues) < len(dues) / 4  # a few nodes already past


# ---------------------------------------------------------------------------------------------
# Round trips


def test_xlsx_round_trip_sample(sample: Plan, tmp_path: Path) -> None:
    write_plan_xlsx(sample, tmp_path / "p.xlsx")
    assert read_plan_xlsx(tmp_path / "p.xlsx") == sample


def test_yaml_round_trip_sample(sample: Plan, tmp_path: Path) -> None:
    write_plan_yaml(sample, tmp_path / "p.yaml")
    assert read_plan(tmp_path / "p.yaml") == sample


def _odd_plan() -> Plan:
    """Every field away from its default, and the awkward values: instants in UTC and in a
    named zone, a numeric-looking ladder code, an empty roster, spans in working days."""
    return Plan(
        code="odd-1",
        title="测试计划",
        timezone="Asia/Urumqi",
        start=dt.date(2026, 9, 30),
        start_at=dt.datetime(2026, 9, 30, 9, 30, tzinfo=UTC),
        units=(
            Unit(code="o", name="专班", kind="office"),
            Unit(code="t1", name="甲镇", kind="township", parent="o"),
            Unit(code="c1", name="乙社区", kind="community", parent="t1"),
        ),
        roster=(),
        tasks=(
            TaskDef(
                code="a",
                title="甲",
                lead_unit="o",
                ladder="13710",
                major=True,
                start_level=2,
                responsible=("t1", "c1"),
            ),
            TaskDef(
                code="b",
                title="乙",
                category="类",
                standard="标准\n第二行",
                lead_unit="o",
                ladder="sanming",
                responsible_kind="community",
                end=dt.date(2026, 12, 31),
                nodes=(
                    NodeSpec(code="n0", title="零", working_days=0),
                    NodeSpec(
                        code="n1",
                        title="一",
                        kind="report",
                        due_at=dt.datetime(2026, 10, 9, 8, 15, 30, tzinfo=UTC),
                        planned_progress=10,
                    ),
                    NodeSpec(
                        code="n2", title="二", working_days=3, after="n1", planned_progress=50
                    ),
                    NodeSpec(
                        code="n3", title="三", working_days=2, after="start", planned_progress=60
                    ),
                    NodeSpec(
                        code="n4", title="四", due=dt.date(2026, 12, 31), planned_progress=100
                    ),
                ),
            ),
        ),
        recheck=RecheckPolicy(percent=0, after={"working_days": 10, "hours": 4}, window={}),
    )


@pytest.mark.parametrize("suffix", [".xlsx", ".yaml", ".yml"])
def test_round_trip_odd_values(suffix: str, tmp_path: Path, ladders: dict[str, Ladder]) -> None:
    plan = _odd_plan()
    assert validate_plan(plan, ladders) == []
    path = tmp_path / f"odd{suffix}"
    (write_plan_xlsx if suffix == ".xlsx" else write_plan_yaml)(plan, path)
    back = read_plan(path)
    assert back == plan
    assert resolve_plan(back, ladders) == resolve_plan(plan, ladders)


_name = (
    st.text(alphabet="甲乙丙丁督办网格两委abcXYZ 0123（）“”", min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)
_code = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)


@st.composite
def _plans(draw: st.DrawFn) -> Plan:
    units = [Unit(code="o", name=draw(_name), kind="office")]
    for i in range(draw(st.integers(1, 4))):
        units.append(
            Unit(
                code=f"u{i}",
                name=draw(_name),
                kind=draw(st.sampled_from(["township", "village", "community", "department"])),
            )
        )
    tasks = []
    for ti in range(draw(st.integers(1, 3))):
        nodes = []
        progress = 0
        for ni in range(draw(st.integers(0, 4))):
            progress = draw(st.integers(progress, 100))
            which = draw(st.sampled_from(["due", "due_at", "wd"]))
            extra: dict[str, object] = {}
            if which == "due":
                extra["due"] = draw(st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31)))
            elif which == "due_at":
                extra["due_at"] = draw(
                    st.datetimes(
                        dt.datetime(2026, 1, 1),
                        dt.datetime(2027, 12, 31),
                        timezones=st.sampled_from([UTC, CST, dt.timezone(dt.timedelta(hours=-5))]),
                    )
                )
            else:
                extra["working_days"] = draw(st.integers(0, 30))
                if ni and draw(st.booleans()):
                    extra["after"] = f"n{ni - 1}"
            nodes.append(
                NodeSpec(
                    code=f"n{ni}",
                    title=draw(_name),
                    kind=draw(st.sampled_from(["milestone", "report"])),
                    planned_progress=progress,
                    **extra,
                )
            )
        tasks.append(
            TaskDef(
                code=f"{draw(_code)}{ti}",
                title=draw(_name),
                category=draw(st.just("") | _name),
                lead_unit="o",
                standard=draw(st.just("") | _name),
                ladder=draw(st.sampled_from(["deadline-lights", "13710", "x"])),
                major=draw(st.booleans()),
                start_level=draw(st.none() | st.integers(1, 5)),
                responsible=tuple(
                    draw(st.lists(st.sampled_from([u.code for u in units]), max_size=3))
                ),
                responsible_kind=draw(st.none() | st.sampled_from(["township", "village"])),
                end=draw(st.none() | st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31))),
                nodes=tuple(nodes),
            )
        )
    return Plan(
        code=draw(_code),
        title=draw(_name),
        start=draw(st.dates(dt.date(2025, 1, 1), dt.date(2027, 1, 1))),
        start_at=draw(
            st.none()
            | st.datetimes(dt.datetime(2025, 1, 1), dt.datetime(2027, 1, 1), timezones=st.just(CST))
        ),
        units=tuple(units),
        roster=(),
        tasks=tuple(tasks),
        recheck=RecheckPolicy(
            percent=draw(st.integers(0, 100)), after={"days": draw(st.integers(0, 60))}
        ),
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=_plans())
def test_round_trip_generated(plan: Plan, tmp_path: Path) -> None:
    write_plan_xlsx(plan, tmp_path / "g.xlsx")
    assert read_plan_xlsx(tmp_path / "g.xlsx") == plan
    write_plan_yaml(plan, tmp_path / "g.yaml")
    assert read_plan(tmp_path / "g.yaml") == plan


def test_xlsx_has_real_date_cells_and_chinese_headers(tmp_path: Path) -> None:
    wb = load_workbook(SAMPLE_XLSX)
    assert wb.sheetnames[:5] == ["计划", "单位", "人员", "任务", "节点"]
    nodes = wb["节点"]
    assert [c.value for c in nodes[1]] == [
        "任务编码",
        "节点编码",
        "名称",
        "类型",
        "截止日期",
        "截止时刻",
        "工作日",
        "起算",
        "计划进度",
    ]
    dated = [row[4] for row in nodes.iter_rows(min_row=2) if row[4].value is not None]
    assert dated and all(c.is_date for c in dated)
    tasks = wb["任务"]
    assert [c.value for c in tasks[1]] == [
        "编码",
        "名称",
        "类别",
        "牵头单位",
        "完成标准",
        "督办阶梯",
        "重大",
        "起始级别",
        "责任单位",
        "责任单位类型",
        "截止日期",
    ]
    assert {row[6].value for row in tasks.iter_rows(min_row=2)} == {"是", "否"}
    plan_rows = {r[0].value: r[1] for r in wb["计划"].iter_rows(min_row=2)}
    assert plan_rows["开始日期"].is_date and plan_rows["回头看比例"].value == 20


def test_xlsx_tolerates_office_habits(sample: Plan, tmp_path: Path) -> None:
    """Reordered columns, a 备注 column, a hint in a header, text dates, Chinese commas,
    numeric codes, blank rows and English codes for kinds are all read as meant."""
    path = tmp_path / "p.xlsx"
    write_plan_xlsx(sample, path)
    wb = load_workbook(path)
    ws = wb["节点"]
    ws.insert_cols(1)
    ws["A1"] = "备注"
    ws["A2"] = "随便写"
    ws.move_range("B1:B200", rows=0, cols=9)  # 任务编码 to the far right
    ws["J1"] = "计划进度（%）"
    row = next(r for r in ws.iter_rows(min_row=2) if r[5].value is not None)
    row[5].value = row[5].value.strftime("%Y年%m月%d日")
    ws.insert_rows(3)
    tasks = wb["任务"]
    for r in tasks.iter_rows(min_row=2):
        if r[9].value == "乡镇街道":
            r[9].value = "township"
        if r[8].value:
            r[8].value = r[8].value.replace("，", "、")
    wb.save(path)
    assert read_plan_xlsx(path) == sample


# ---------------------------------------------------------------------------------------------
# Errors: clear, all at once, and located


def _write(tmp_path: Path, plan: Plan, suffix: str) -> Path:
    path = tmp_path / f"bad{suffix}"
    (write_plan_xlsx if suffix == ".xlsx" else write_plan_yaml)(plan, path)
    return path


def _with_task(plan: Plan, code: str, **update: object) -> Plan:
    tasks = tuple(t.model_copy(update=update) if t.code == code else t for t in plan.tasks)
    return plan.model_copy(update={"tasks": tasks})


def _load_error(path: Path, ladders: dict[str, Ladder]) -> PlanReadError:
    with pytest.raises(PlanReadError) as e:
        load_plan(path, ladders)
    return e.value


@pytest.mark.parametrize("suffix", [".xlsx", ".yaml"])
def test_error_unknown_unit(
    sample: Plan, ladders: dict[str, Ladder], tmp_path: Path, suffix: str
) -> None:
    bad = _with_task(sample, "qzwt", responsible=("t04", "t99"))
    bad = bad.model_copy(
        update={"roster": (*bad.roster[:-1], bad.roster[-1].model_copy(update={"unit": "nowhere"}))}
    )
    err = _load_error(_write(tmp_path, bad, suffix), ladders)
    text = str(err)
    assert "bad" + suffix in text
    assert "tasks.qzwt: unknown responsible unit 't99'" in text
    assert "unknown unit 'nowhere'" in text
    if suffix == ".xlsx":
        n_task = [t.code for t in sample.tasks].index("qzwt") + 2
        assert f"sheet 任务, row {n_task}: tasks.qzwt" in text
        assert f"sheet 人员, row {len(sample.roster) + 1}: roster.tian.tian.t04-v06" in text
    else:
        assert any(p.startswith("line ") and "tasks.qzwt" in p for p in err.problems)
    assert len(err.issues) == 2


@pytest.mark.parametrize("suffix", [".xlsx", ".yaml"])
def test_error_duplicate_task_code(
    sample: Plan, ladders: dict[str, Ladder], tmp_path: Path, suffix: str
) -> None:
    bad = sample.model_copy(update={"tasks": (*sample.tasks, sample.tasks[0])})
    err = _load_error(_write(tmp_path, bad, suffix), ladders)
    line = next(p for p in err.problems if "duplicate task code" in p)
    assert "tasks.bzfg" in line
    if suffix == ".xlsx":
        assert f"sheet 任务, row 2 / sheet 任务, row {len(bad.tasks) + 1}" in line


@pytest.mark.parametrize("suffix", [".xlsx", ".yaml"])
def test_error_duplicate_node_code(
    sample: Plan, ladders: dict[str, Ladder], tmp_path: Path, suffix: str
) -> None:
    t = next(t for t in sample.tasks if t.code == "wgh")
    nodes = (*t.nodes[:2], t.nodes[2].model_copy(update={"code": t.nodes[0].code}))
    err = _load_error(_write(tmp_path, _with_task(sample, "wgh", nodes=nodes), suffix), ladders)
    line = next(p for p in err.problems if "duplicate node code" in p)
    assert "tasks.wgh.nodes.hf" in line
    if suffix == ".xlsx":
        assert "sheet 节点, row" in line


@pytest.mark.parametrize("suffix", [".xlsx", ".yaml"])
def test_error_node_after_task_end(
    sample: Plan, ladders: dict[str, Ladder], tmp_path: Path, suffix: str
) -> None:
    bad = _with_task(sample, "bzfg", end=dt.date(2026, 12, 5))
    err = _load_error(_write(tmp_path, bad, suffix), ladders)
    (line,) = err.problems
    assert "tasks.bzfg.nodes.ba: node due 2026-12-10 is after the task's end 2026-12-05" in line
    if suffix == ".xlsx":
        row = 1 + 3  # the third node of the first task
        assert line.startswith(f"sheet 节点, row {row}:")
    else:
        assert line.startswith("line ")


@pytest.mark.parametrize("suffix", [".xlsx", ".yaml"])
def test_error_unknown_ladder(
    sample: Plan, ladders: dict[str, Ladder], tmp_path: Path, suffix: str
) -> None:
    err = _load_error(_write(tmp_path, _with_task(sample, "wgh", ladder="13711"), suffix), ladders)
    (line,) = err.problems
    assert "ladder '13711' not found (known: 13710, deadline-lights" in line
    assert "tasks.wgh" in line


def test_error_bad_xlsx_cells_name_sheet_row_and_column(sample: Plan, tmp_path: Path) -> None:
    path = _write(tmp_path, sample, ".xlsx")
    wb = load_workbook(path)
    wb["节点"]["E3"] = "下周"  # 截止日期
    wb["节点"]["I4"] = "七成"  # 计划进度
    wb["任务"]["G2"] = "也许"  # 重大
    wb["单位"]["C5"] = "小区"  # 类型
    wb["人员"]["D2"] = "领导，观众"  # 角色
    wb["计划"]["B5"] = "十一月"  # 开始日期
    wb["节点"]["I5"] = 150  # 计划进度 out of range (a model rule)
    wb["节点"]["A6"] = "nosuch"  # 任务编码
    wb.save(path)
    with pytest.raises(PlanReadError) as e:
        read_plan(path)
    err = e.value
    text = str(err)
    assert text.startswith(f"cannot read plan: {path}")
    expected = [
        "sheet 节点, row 3, column E (截止日期): expected a date cell (e.g. 2026-12-31), got '下周'",
        "sheet 节点, row 4, column I (计划进度): expected a whole number, got '七成'",
        "sheet 任务, row 2, column G (重大): expected 是 or 否, got '也许'",
        "sheet 单位, row 5, column C (类型): unknown unit type '小区'",
        "sheet 人员, row 2, column D (角色): unknown role '观众'",
        "sheet 计划, row 5, column B (开始日期): expected a date cell",
        "sheet 节点, row 5, column I (计划进度): Input should be less than or equal to 100, got 150",
        "sheet 节点, row 6, column A (任务编码): no task 'nosuch' on sheet 任务",
    ]
    for want in expected:
        assert any(want in p for p in err.problems), (want, err.problems)
    assert len(err.problems) == len(expected)


def test_error_xlsx_structure(sample: Plan, tmp_path: Path) -> None:
    path = _write(tmp_path, sample, ".xlsx")
    wb = load_workbook(path)
    wb["任务"]["L1"] = "负责人"
    wb["单位"]["B1"] = None
    wb.save(path)
    with pytest.raises(PlanReadError) as e:
        read_plan(path)
    assert any(
        "sheet 任务, row 1, column L: unknown column '负责人'" in p for p in e.value.problems
    )
    assert any("sheet 单位: missing column(s) 名称" in p for p in e.value.problems)

    del wb["任务"]
    wb.save(path)
    with pytest.raises(PlanReadError, match="missing sheet"):
        read_plan(path)
    (tmp_path / "junk.xlsx").write_text("not a workbook")
    with pytest.raises(PlanReadError, match="junk.xlsx"):
        read_plan(tmp_path / "junk.xlsx")


def test_error_yaml_names_line_and_item(sample: Plan, tmp_path: Path) -> None:
    text = SAMPLE_YAML.read_text(encoding="utf-8")
    lines = text.splitlines()
    target = next(i for i, line in enumerate(lines) if "code: jd," in line)
    lines[target] = lines[target].replace("planned_progress: 50", "planned_progress: 500")
    bad = "\n".join(lines).replace('ladder: "13710"', "ladder: 13710")
    path = tmp_path / "bad.yaml"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(PlanReadError) as e:
        read_plan(path)
    problems = e.value.problems
    assert any(
        p.startswith(f"line {target + 1}, tasks[3] (jxzx).nodes[1] (jd).planned_progress:")
        and "less than or equal to 100" in p
        for p in problems
    ), problems
    assert any("(qzwt).ladder" in p and "write it as text, e.g. '13710'" in p for p in problems)
    path.write_text("code: [unclosed\n", encoding="utf-8")
    with pytest.raises(PlanReadError, match="not valid YAML"):
        read_plan(path)
    with pytest.raises(PlanReadError, match="unknown plan format"):
        read_plan(tmp_path / "plan.csv")


def test_load_ladders(tmp_path: Path) -> None:
    ladders = load_ladders()
    assert {
        "13710",
        "deadline-lights",
        "sanming",
        DEMO_LADDER,
        "rectification",
        "false-report",
    } <= set(ladders)
    assert load_ladders(LADDER_DIR) == ladders
    for path in LADDER_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "broken.yaml").write_text(
        yaml.safe_dump({"code": "broken", "title": "坏", "steps": []}, allow_unicode=True),
        encoding="utf-8",
    )
    with pytest.raises(PlanReadError) as e:
        load_ladders(tmp_path)
    (line,) = e.value.problems
    assert "broken.yaml" in line and "has no steps" in line


# ---------------------------------------------------------------------------------------------
# The demo plan


def test_demo_plan(sample: Plan, ladders: dict[str, Ladder], tmp_path: Path) -> None:
    now = dt.datetime(2026, 11, 23, 9, 41, 27, 512, tzinfo=UTC)
    demo = demo_plan(now, sample)
    assert validate_plan(demo, ladders) == []
    assert demo.code == "demo-djyl-2026"
    assert demo.units == sample.units and demo.roster == sample.roster
    assert demo.start_at is not None and demo.start_at == now.replace(microsecond=0) - dt.timedelta(
        days=2
    )
    specs = resolve_plan(demo, ladders)
    assert {s.task_code for s in specs} == {t.code for t in sample.tasks}

    def status(nodes: tuple[ResolvedNode, ...], ladder: Ladder) -> str:
        first = nodes[0].due  # nothing is done yet: the first node decides
        if first <= now:
            return "red"
        return "yellow" if ladder.yellow_before.before(first) <= now else "green"

    lights = Counter((s.ladder, status(s.nodes, ladders[s.ladder])) for s in specs)
    fast = [s for s in specs if s.ladder == DEMO_LADDER]
    assert {s.task_code for s in fast} == {"bzfg", "wgh"}
    # red at once, with rungs firing; yellow now and red within minutes
    assert lights[(DEMO_LADDER, "red")] == 4  # every township
    assert lights[(DEMO_LADDER, "yellow")] == 4  # a few villages
    soon = [n.due for s in fast for n in s.nodes if n.due > now]
    assert soon and all(now < d <= now + dt.timedelta(minutes=10) for d in soon)
    overdue = [n.due for s in fast for n in s.nodes if n.due <= now]
    assert all(now - dt.timedelta(minutes=6) <= d for d in overdue)
    # most on deadline-lights, green; a few yellow two days ahead
    assert lights[("deadline-lights", "green")] > lights[("deadline-lights", "yellow")] > 0
    slow = [s for s in specs if s.ladder == "deadline-lights"]
    assert len(slow) > len(specs) / 2
    assert all(n.due > now for s in slow for n in s.nodes)
    assert all(n.due < now + dt.timedelta(days=60) for s in slow for n in s.nodes)
    # and it survives both formats
    write_plan_xlsx(demo, tmp_path / "demo.xlsx")
    assert read_plan(tmp_path / "demo.xlsx") == demo
    write_plan_yaml(demo, tmp_path / "demo.yaml")
    assert read_plan(tmp_path / "demo.yaml") == demo


def test_demo_plan_needs_an_aware_now(sample: Plan) -> None:
    with pytest.raises(ValueError, match="aware"):
        demo_plan(dt.datetime(2026, 11, 23, 10), sample)


@pytest.mark.parametrize("hour", [0, 7, 15, 16, 23])
def test_demo_plan_valid_at_any_hour(sample: Plan, ladders: dict[str, Ladder], hour: int) -> None:
    demo = demo_plan(dt.datetime(2026, 12, 31, hour, 59, tzinfo=UTC), sample)
    assert validate_plan(demo, ladders) == []


# ---------------------------------------------------------------------------------------------
# Plan resolution: working days on the official calendar, end of the local day


@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        # 国庆 2026: Oct 1–7 off; Sun Sep 20 and Sat Oct 10 are working days (调休)
        (dt.date(2026, 9, 30), 1, dt.date(2026, 10, 8)),
        (dt.date(2026, 9, 19), 1, dt.date(2026, 9, 20)),
        (dt.date(2026, 9, 18), 2, dt.date(2026, 9, 21)),
        (dt.date(2026, 10, 9), 1, dt.date(2026, 10, 10)),
        (dt.date(2026, 9, 30), 3, dt.date(2026, 10, 10)),
        # 春节 2026: Feb 15–23 off; Sat Feb 14 and Sat Feb 28 are working days
        (dt.date(2026, 2, 13), 1, dt.date(2026, 2, 14)),
        (dt.date(2026, 2, 14), 1, dt.date(2026, 2, 24)),
        (dt.date(2026, 2, 27), 1, dt.date(2026, 2, 28)),
        (dt.date(2026, 2, 28), 1, dt.date(2026, 3, 2)),
        # n == 0 is the day itself, working day or not
        (dt.date(2026, 10, 3), 0, dt.date(2026, 10, 3)),
    ],
)
def test_add_working_days_official_calendar(start: dt.date, n: int, expected: dt.date) -> None:
    res = add_working_days(start, n)
    assert res.day == expected
    assert res.estimated_years == ()


def test_holiday_and_adjusted_days() -> None:
    assert not any(is_working_day(dt.date(2026, 10, d)) for d in range(1, 8))
    assert is_working_day(dt.date(2026, 9, 20)) and is_working_day(dt.date(2026, 10, 10))
    assert not any(is_working_day(dt.date(2026, 2, d)) for d in range(15, 24))
    assert is_working_day(dt.date(2026, 2, 14)) and is_working_day(dt.date(2026, 2, 28))


def test_end_of_local_day() -> None:
    """ "12月31日前" in Asia/Shanghai is 16:00 UTC on the 31st."""
    assert end_of_local_day(dt.date(2026, 12, 31)) == dt.datetime(2026, 12, 31, 16, tzinfo=UTC)
    assert end_of_local_day(dt.date(2026, 12, 31), "Asia/Shanghai") == dt.datetime(
        2027, 1, 1, tzinfo=CST
    )


def test_unpublished_year_is_flagged() -> None:
    assert 2026 in published_years() and 2027 not in published_years()
    res = add_working_days(dt.date(2026, 12, 30), 3)
    assert res.day == dt.date(2027, 1, 5)  # 2027-01-01 is a statutory holiday even so
    assert res.estimated_years == (2027,)
    assert add_working_days(dt.date(2027, 3, 1), 0).estimated_years == (2027,)


def _one_task_plan(start: dt.date, *nodes: NodeSpec) -> Plan:
    return Plan(
        code="t",
        title="t",
        start=start,
        units=(
            Unit(code="o", name="专班", kind="office"),
            Unit(code="t1", name="镇", kind="township"),
        ),
        tasks=(
            TaskDef(code="a", title="a", lead_unit="o", responsible_kind="township", nodes=nodes),
        ),
    )


def test_resolution_across_national_day(ladders: dict[str, Ladder]) -> None:
    plan = _one_task_plan(
        dt.date(2026, 9, 30),
        NodeSpec(code="a", title="a", working_days=1, planned_progress=10),
        NodeSpec(code="b", title="b", due=dt.date(2026, 10, 9), planned_progress=20),
        NodeSpec(code="c", title="c", working_days=1, after="b", planned_progress=30),
        NodeSpec(
            code="d",
            title="d",
            due_at=dt.datetime(2026, 10, 9, 18, tzinfo=CST),
            planned_progress=40,
        ),
        NodeSpec(code="e", title="e", working_days=2, after="d", planned_progress=50),
    )
    (spec,) = resolve_plan(plan, ladders)
    due = {n.code: n.due for n in spec.nodes}
    assert due["a"] == dt.datetime(2026, 10, 8, 16, tzinfo=UTC)  # end of Thu Oct 8
    assert due["b"] == dt.datetime(2026, 10, 9, 16, tzinfo=UTC)
    assert due["c"] == dt.datetime(2026, 10, 10, 16, tzinfo=UTC)  # Sat Oct 10 is a working day
    assert due["e"] == dt.datetime(2026, 10, 12, 18, tzinfo=CST)  # Sat 10th, Mon 12th, same hour
    assert estimated_calendar_years([spec]) == []


def test_resolution_into_an_unpublished_year(ladders: dict[str, Ladder]) -> None:
    plan = _one_task_plan(
        dt.date(2026, 12, 1),
        NodeSpec(code="a", title="a", due=dt.date(2026, 12, 31), planned_progress=50),
        NodeSpec(code="b", title="b", working_days=3, after="a", planned_progress=100),
    )
    (spec,) = resolve_plan(plan, ladders)
    a, b = spec.nodes
    assert a.calendar_estimated == ()
    # Thu 12-31 → (Fri 1-1 holiday) Mon 1-4, Tue 1-5, Wed 1-6
    assert b.due == dt.datetime(2027, 1, 6, 16, tzinfo=UTC) and b.calendar_estimated == (2027,)
    assert estimated_calendar_years([spec]) == [2027]
