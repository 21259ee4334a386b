"""Benchmark: the web app's read pages (挂图作战) at the scale of a province's plan.

Seeds a fresh store (SQLite in a temporary folder; also PostgreSQL with `--postgres URL`, in a
schema of its own that is dropped afterwards), migrated the way the store migrates
(`open_store`), with N task instances (default 100,000 = 20 tasks x 5,000 responsible units:
~100 townships of ~48 villages and communities each, the townships themselves, and ~100
county departments, 区直单位). Rows are what the projection writes (lights, 督办层级, statuses,
nodes JSON with extensions) in a realistic mix, bulk-inserted with SQLAlchemy core executemany:
the `tasks` read model; the events the pages read (each task's TaskAssigned, its rungs fired,
extension decisions and nodes accepted; hashes are placeholders, nothing here verifies them);
a 督办单 notice per rung fired; and the roster (`people`, through `service.users`).

Then it signs in through /login (credentials issued by `service.users`) as an office user
(督查办: sees the whole plan) and as a village member (sees its own unit's tasks), and times
each page with TestClient: one untimed first request (`first_ms`; on SQLite it also pays for
the board's hourly `PRAGMA optimize`), then `--repeat` timed ones. On PostgreSQL the load is
followed by VACUUM ANALYZE (statistics and the visibility map autovacuum would give a live
database).

Prints JSON lines:

    {"bench": "web_seed", "backend": ..., "tasks": N, "events": ..., "seconds": ..., "db_mb": ...}
    {"bench": "web_page", "page": ..., "viewer": ..., "tasks": N, "median_ms": ..., "max_ms": ...,
     "baseline_ms": ..., "ratio": ..., "rows": ..., "first_ms": ..., "backend": ...}

`baseline_ms` is the same run's bare read of the rows the page shows: one indexed SELECT of
the page's columns on the driver connection, fetched, median of `--repeat`. For HTML pages
the rows are the task ids found in the page (grid cells, list rows, Gantt rows: primary-key
probes); for an export, its rows along the export's own index range (the township's, or the
plan's). `ratio` = median_ms / baseline_ms: what the app costs over reading that data (its
counts over the whole plan, the other queries, rendering, HTTP).

The export is timed for one township (~1,000 rows, what an office exports for a meeting:
bounded like a page) at `--repeat`; the whole plan's workbook (every row, streamed) once, as
`export_plan`, unless `--no-full-export`.

    python bench/bench_board.py                          # 100,000 task instances, SQLite
    python bench/bench_board.py --tasks 20000 --repeat 3
    python bench/bench_board.py --postgres postgresql+psycopg://user@host/db
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import Table, create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from domain.plan import Member  # noqa: E402
from infra.db.engine import write_options  # noqa: E402
from infra.db.models import EventRow, NoticeRow, TaskRow  # noqa: E402
from infra.db.store import EventStore, open_store  # noqa: E402
from service import users  # noqa: E402
from web import board_data as bd  # noqa: E402
from web.app import create_app  # noqa: E402
from web.context import WebContext  # noqa: E402

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai: the plan starts
NOW = dt.datetime(2026, 6, 19, 1, 0, tzinfo=UTC)  # Friday 09:00 in Shanghai: the board's time
PLAN = "prov-2026"
PLAN_TITLE = "全省重点任务督办计划（2026年）"
OFFICE = "office.staff"
BATCH = 5000  # rows per executemany

tasks_t: Table = TaskRow.__table__  # type: ignore[assignment]
events_t: Table = EventRow.__table__  # type: ignore[assignment]
notices_t: Table = NoticeRow.__table__  # type: ignore[assignment]

TITLES = ("两委增补", "网格化管理", "人居环境整治", "防汛备汛", "森林防火", "安全生产大排查",
          "耕地保护", "高标准农田建设", "乡村振兴示范创建", "基层党建述职", "信访积案化解",
          "垃圾分类", "河长制巡河", "城乡医保参保", "养老保险扩面", "农村危房改造",
          "农村饮水安全", "校园安全整治", "消防隐患整治", "移风易俗")
NODE_TITLES = ("摸底调查", "制定方案", "组织实施", "检查验收", "总结报告")
DEPTS = ("民政局", "教育局", "财政局", "农业农村局", "水利局", "应急管理局", "住建局",
         "卫健委", "人社局", "医保局", "林业局", "自然资源局", "生态环境局", "公安局",
         "市场监管局", "交通运输局", "文旅局", "信访局", "司法局", "商务局")
TOWN_A = "东西南北上下新老大小金银石柳桃杨河山青白"
TOWN_B = "关庄集坪桥湾店口岭坝铺寨营堡塘溪沟滩峪川"
VIL_A = "王李张刘陈杨赵黄周吴徐孙马朱胡郭何高林罗"
VIL_B = "家庄沟湾坪岭河坡塘桥园寨营峪台屯堡洼店窑"
VIL_C = "上下前后东西南北中大小新老一二三"
LADDERS = {  # the ladders' rungs by level (planfiles/ladders)
    "deadline-lights": {1: ("remind", "催办提醒"), 2: ("order", "督办单"), 3: ("talk", "约谈"),
                        4: ("criticise", "通报批评"), 5: ("accountability", "问责")},
    "sanming": {1: ("blue", "蓝色督办提醒"), 2: ("orange", "橙色督办预警（重新限期）"),
                3: ("red", "红色督办警告")},
}
ZEROS = "0" * 64


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- the province ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    code: str
    name: str
    kind: str  # township, village, community, department
    township: str | None
    township_name: str | None
    parent: str | None


def province(count: int) -> list[Unit]:
    """`count` responsible units: ~2% county departments (no township), the rest in townships
    of ~49 units each (the township itself and its villages and communities)."""
    depts = count // 50
    rest = count - depts
    towns = max(1, round(rest / 49))
    out = [Unit(f"d{i:03d}", "县" + DEPTS[i % len(DEPTS)] + (f"{i // len(DEPTS) + 1}所" if i >= len(DEPTS) else ""),
                "department", None, None, None) for i in range(depts)]
    starts = [rest * t // towns for t in range(towns + 1)]
    for t in range(towns):
        code = f"t{t:03d}"
        name = TOWN_A[t % 20] + TOWN_B[(t // 20) % 20] + ("街道" if t % 6 == 0 else "镇")
        out.append(Unit(code, name, "township", code, name, None))
        for j in range(1, starts[t + 1] - starts[t]):
            k = starts[t] + j  # unique per village: three syllables, 6,400 combinations
            kind = "community" if k % 5 == 0 else "village"
            vname = VIL_A[k % 20] + VIL_B[(k // 20) % 20] + VIL_C[(k // 400) % 16] + (
                "社区" if kind == "community" else "村")
            out.append(Unit(f"{code}v{j:03d}", vname, kind, code, name, code))
    return out


@dataclass(frozen=True)
class TaskDef:
    code: str
    title: str
    ladder: str
    lead: str
    nodes: tuple[str, ...]


def task_defs(count: int, units: list[Unit]) -> list[TaskDef]:
    leads = [u.code for u in units if u.kind == "department"] or [units[0].code]
    return [TaskDef(code=f"T{i + 1:02d}",
                    title=TITLES[i % len(TITLES)] + ("" if i < len(TITLES) else f"（{i // len(TITLES) + 1}）"),
                    ladder="sanming" if i % 5 == 4 else "deadline-lights",
                    lead=leads[i % len(leads)],
                    nodes=NODE_TITLES[: 2 + i % 3]) for i in range(count)]


def _status(rng: random.Random) -> str:
    x = rng.random()
    for status, upto in (("closed", .10), ("completed", .15), ("claimed", .20),
                         ("in_progress", .65), ("acknowledged", .90)):
        if x < upto:
            return status
    return "assigned"


def instance(rng: random.Random, t: TaskDef, u: Unit) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                              list[dict[str, Any]]]:
    """One task instance: its `tasks` row, the events the pages read, its notices."""
    task_id = f"{PLAN}/{t.code}/{u.code}"
    status = _status(rng)
    done = status in bd.DONE_STATUSES
    light, level = "green", 0
    if not done:
        x = rng.random()
        if x < .15:
            light = "red"
            level = min(rng.choices((1, 2, 3, 4, 5), (40, 30, 20, 7, 3))[0], len(LADDERS[t.ladder]))
        elif x < .35:
            light, level = "yellow", 1 if rng.random() < .2 else 0
    k = len(t.nodes)
    current = k if done else rng.randrange(k)  # the first node still open
    if done:
        due = NOW - dt.timedelta(days=rng.randint(1, 30), hours=rng.randint(0, 23))
        anchor = due + dt.timedelta(days=20)  # the last node's due is `due`: anchor - 20 days
    elif light == "red":
        anchor = NOW - dt.timedelta(days=rng.randint(1, 25), hours=rng.randint(0, 23))
    elif light == "yellow":
        anchor = NOW + dt.timedelta(hours=rng.randint(1, 72))
    else:
        anchor = NOW + dt.timedelta(days=rng.randint(4, 60), hours=rng.randint(0, 23))
    extended = not done and rng.random() < .05
    nodes: list[dict[str, Any]] = []
    for j, title in enumerate(t.nodes):
        node_due = anchor + dt.timedelta(days=20 * (j - current))
        original = node_due - dt.timedelta(days=7) if extended and j == current else node_due
        node_status = ("done" if j < current else
                       "claimed" if j == current and status == "claimed" else "open")
        nodes.append({"code": f"N{j + 1}", "title": title, "kind": "milestone",
                      "status": node_status, "original_due": original.isoformat(),
                      "due": node_due.isoformat(),
                      "on_time": (rng.random() > .1) if node_status == "done" else None})
    next_due = None if done else anchor
    progress = 100 if done else min(99, 100 * current // k + rng.randrange(100 // k))

    def event(type_: str, at: dt.datetime, actor: str, **body: Any) -> dict[str, Any]:
        seq = len(events) + 1
        return {"task_id": task_id, "seq": seq, "type": type_, "occurred_at": at, "actor": actor,
                "payload": {"actor": actor, "at": iso(at), "seq": seq, "task_id": task_id,
                            "type": type_, "v": 1, **body},
                "schema_version": 1, "prev_hash": ZEROS, "hash": ZEROS, "recorded_at": NOW}

    events: list[dict[str, Any]] = []
    spec = {"plan_code": PLAN, "plan_title": PLAN_TITLE, "task_code": t.code, "title": t.title,
            "unit": {"code": u.code, "name": u.name, "kind": u.kind}, "lead_unit": t.lead,
            "ladder": t.ladder, "nodes": [{"code": n["code"], "title": n["title"],
                                           "due": n["original_due"]} for n in nodes]}
    events.append(event("TaskAssigned", T0, "system", spec=spec))
    member = f"m.{u.code}"
    for n in nodes[:current]:
        at = dt.datetime.fromisoformat(n["due"]) - dt.timedelta(days=1)
        events.append(event("NodeAccepted", min(at, NOW), f"h.{t.lead}", node=n["code"]))
    notices: list[dict[str, Any]] = []
    if extended:
        n = nodes[current]
        events.append(event("ExtensionDecided", dt.datetime.fromisoformat(n["original_due"])
                            - dt.timedelta(days=2), "leader", approved=True, node=n["code"],
                            original_due=n["original_due"], previous_due=n["original_due"],
                            granted_due=n["due"], reason="同意延期"))
    for lvl in range(1, level + 1 if light == "red" else 1):
        step, title = LADDERS[t.ladder][lvl]
        at = min(NOW, anchor + dt.timedelta(days=2 * lvl - 1))
        node = nodes[current]["code"]
        key = f"node:{node}:0:{step}"
        events.append(event("EscalationFired", at, "system", action="notice", level=lvl,
                            ladder=t.ladder, step=step, step_key=key, target=node,
                            target_kind="node", title=title, demand="限期完成并书面反馈"))
        notices.append({"task_id": task_id, "step_key": key, "node": node, "ladder": t.ladder,
                        "step": step, "level": lvl, "title": f"{title}：{t.title}（{u.name}）",
                        "document": f"# {title}\n\n**督办事项**: {PLAN_TITLE} — {t.title}\n"
                                    f"**责任单位**: {u.name}（{u.code}）\n",
                        "reply_by": None, "created_at": at})
    if status != "assigned":
        events.insert(1, event("Acknowledged", T0 + dt.timedelta(days=1), member, note=""))
        for i, e in enumerate(events):  # renumber: the acknowledgement came second
            e["seq"] = e["payload"]["seq"] = i + 1
    row = {"task_id": task_id, "plan_code": PLAN, "task_code": t.code, "unit_code": u.code,
           "parent_unit": u.parent, "unit_name": u.name, "township": u.township,
           "township_name": u.township_name, "title": t.title, "lead_unit": t.lead,
           "ladder": t.ladder, "status": status, "light": light, "level": level,
           "progress": progress, "next_due_at": next_due, "nodes": nodes,
           "open_findings": (1 + rng.randrange(2)) if rng.random() < .05 else 0,
           "last_seq": len(events), "updated_at": max(e["occurred_at"] for e in events)}
    return row, events, notices


@dataclass
class Seeded:
    tasks: int
    events: int
    notices: int
    people: int
    seconds: float
    units: list[Unit]
    defs: list[TaskDef]


def _chunks(rows: Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]],
            size: int) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]],
                                         list[dict[str, Any]]]]:
    t: list[dict[str, Any]] = []
    e: list[dict[str, Any]] = []
    n: list[dict[str, Any]] = []
    for row, events, notices in rows:
        t.append(row)
        e.extend(events)
        n.extend(notices)
        if len(t) >= size:
            yield t, e, n
            t, e, n = [], [], []
    if t:
        yield t, e, n


def seed(engine: Engine, tasks: int, task_codes: int = 20) -> Seeded:
    """The plan's rows, bulk-inserted; then the roster through `service.users`."""
    started = time.perf_counter()
    codes = max(1, min(task_codes, tasks))
    units = province(max(1, -(-tasks // codes)))
    defs = task_defs(codes, units)
    rng = random.Random(2026)

    def rows() -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
        n = 0
        for t in defs:
            for u in units:
                if n == tasks:
                    return
                n += 1
                yield instance(rng, t, u)

    counts = [0, 0, 0]
    with engine.connect().execution_options(**write_options()) as conn, conn.begin():
        for t_rows, e_rows, n_rows in _chunks(rows(), BATCH):
            conn.execute(tasks_t.insert(), t_rows)
            conn.execute(events_t.insert(), e_rows)
            if n_rows:
                conn.execute(notices_t.insert(), n_rows)
            counts[0] += len(t_rows)
            counts[1] += len(e_rows)
            counts[2] += len(n_rows)
    names = {u.code: u.name for u in units} | {"dbb": "县委督查办"}
    members = [Member(actor=OFFICE, name="赵磊", unit="dbb", roles=("office",)),
               Member(actor="leader", name="李国强", unit="dbb", roles=("leader",)),
               Member(actor="supervisor", name="周强", unit="dbb", roles=("supervisor",))]
    for u in units:
        members.append(Member(actor=f"m.{u.code}", name=f"{u.name}联络员", unit=u.code))
        if u.kind in ("township", "department"):
            members.append(Member(actor=f"h.{u.code}", name=f"{u.name}负责人", unit=u.code,
                                  roles=("head", "lead")))
    people = users.store_roster(engine, PLAN, members, names, now=T0)
    return Seeded(tasks=counts[0], events=counts[1], notices=counts[2], people=people,
                  seconds=time.perf_counter() - started, units=units, defs=defs)


# --- the pages -------------------------------------------------------------------------------

TASK_IDS = re.compile(r'data-task="([^"]+)"')
GANTT_IDS = re.compile(r'<a href="/tasks/([^"]+)">')


@dataclass
class Page:
    name: str
    viewer: str
    path: str
    expect_rows: int | None = None  # rows shown, when known in advance
    export_where: tuple[str, dict[str, Any]] | None = None  # an export's rows: WHERE, params
    repeat: int | None = None  # None: --repeat
    warm: bool = True  # an untimed first request (False: the first one is the timed one)


async def _no_temporal() -> Any:
    raise AssertionError("the board pages never need Temporal")


def sign_in(app: Any, engine: Engine, actor: str) -> TestClient:
    client = TestClient(app)
    password = users.issue(engine, actor, now=dt.datetime.now(UTC), issued_by="bench")
    r = client.post("/login", data={"actor": actor, "password": password, "next": "/"},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


def shown_ids(page: Page, body: bytes) -> list[str]:
    """The task ids an HTML page shows (grid cells, list rows, Gantt rows), distinct."""
    html = body.decode("utf-8")
    pattern = GANTT_IDS if page.path.startswith("/gantt") else TASK_IDS
    return list(dict.fromkeys(pattern.findall(html)))


def export_rows(body: bytes) -> int:
    """Rows of the workbook's 任务清单 sheet below its heading. Counted in the sheet's XML:
    parsing a province's workbook with openpyxl would take longer than writing it."""
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        sheets = re.findall(r'<sheet [^>]*name="([^"]+)"', z.read("xl/workbook.xml").decode())
        # A write-only workbook names its sheets' parts sheet1.xml, ... in creation order.
        part = f"xl/worksheets/sheet{sheets.index('任务清单') + 1}.xml"
        return z.read(part).count(b"<row ") - 1


def bare_read(engine: Engine, page: Page, ids: list[str], repeat: int) -> tuple[float, int]:
    """Median seconds of one SELECT of the page's rows on the driver connection, and rows."""
    cols = bd.LIST_COLUMNS + (("nodes",) if page.path.startswith("/gantt") else ())
    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    params: Sequence[Any]
    if page.export_where is not None:  # the export's own order, along its index range
        where, named = page.export_where
        sql = (f"SELECT {', '.join(cols)} FROM tasks WHERE {where.format(mark=mark)}"
               " ORDER BY township, unit_code, task_code, task_id")
        params = tuple(named.values())
    else:
        sql = (f"SELECT {', '.join(cols)} FROM tasks"
               f" WHERE task_id IN ({', '.join([mark] * len(ids))})")
        params = tuple(ids)
    times: list[float] = []
    rows = 0
    with engine.connect() as conn:
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(conn.exec_driver_sql(sql, params).fetchall())
            times.append(time.perf_counter() - t0)
    return statistics.median(times), rows


def pages(sd: Seeded, full_export: bool) -> list[Page]:
    towns = [u for u in sd.units if u.kind == "township"]
    town = towns[len(towns) // 2]
    town_units = sum(1 for u in sd.units if u.township == town.code)
    villages = [u for u in sd.units if u.kind in ("village", "community")] or sd.units
    member = villages[len(villages) // 2]
    sought = villages[len(villages) // 3]
    per_page = bd.PAGE_SIZE
    last = max(1, -(-sd.tasks // per_page))
    codes = len(sd.defs)
    # What the grid shows: a page of units (50) x the plan's tasks, when every unit has each.
    full = sd.tasks == codes * len(sd.units)
    grid = min(per_page, len(sd.units)) * codes if full else None
    town_grid = min(per_page, town_units) * codes if full else None
    plan_where = ("plan_code = {mark}", {"plan": PLAN})
    town_where = ("plan_code = {mark} AND township = {mark}", {"plan": PLAN, "town": town.code})
    out = [
        Page("board", OFFICE, "/", None if grid is None else grid),
        Page("board_township", OFFICE, f"/?township={town.code}", town_grid),
        Page("tasks_p1", OFFICE, "/tasks", min(per_page, sd.tasks)),
        Page("tasks_mid", OFFICE, f"/tasks?page={max(1, last // 2)}", min(per_page, sd.tasks)),
        Page("tasks_last", OFFICE, f"/tasks?page={last}"),
        Page("tasks_search", OFFICE, f"/tasks?q={sought.name}"),
        Page("gantt", OFFICE, "/gantt"),
        Page("export_township", OFFICE, f"/export.xlsx?township={town.code}",
             export_where=town_where),
        Page("member_board", f"m.{member.code}", "/"),
        Page("member_tasks", f"m.{member.code}", "/tasks"),
    ]
    if full_export:
        # Once, cold: tens of seconds at a province's scale (see the docstring).
        out.append(Page("export_plan", OFFICE, "/export.xlsx", export_where=plan_where,
                        repeat=1, warm=False))
    return out


def run_pages(store: EventStore, sd: Seeded, backend: str, repeat: int, full_export: bool,
              only: set[str] | None = None, evidence: Path | None = None) -> list[dict[str, Any]]:
    engine = store.engine
    app = create_app(WebContext(engine=engine, store=store,
                                evidence_dir=evidence or Path(tempfile.gettempdir()),
                                connect=_no_temporal, clock=lambda: NOW))
    clients: dict[str, TestClient] = {}
    results: list[dict[str, Any]] = []
    try:
        for page in pages(sd, full_export):
            if only is not None and page.name not in only:
                continue
            client = clients.get(page.viewer)
            if client is None:
                client = clients[page.viewer] = sign_in(app, engine, page.viewer)
            first_s: float | None = None
            if page.warm:
                t0 = time.perf_counter()
                client.get(page.path)
                first_s = time.perf_counter() - t0
            times: list[float] = []
            body = b""
            for _ in range(page.repeat or repeat):
                t0 = time.perf_counter()
                r = client.get(page.path)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, (page.path, r.status_code)
                body = r.content
            if page.export_where is None:
                assert "暂无可查看的任务".encode() not in body, page.path
            if page.export_where is not None:
                ids: list[str] = []
                shown = export_rows(body)
            else:
                ids = shown_ids(page, body)
                shown = len(ids)
            if page.expect_rows is not None:
                assert shown >= page.expect_rows, (page.name, shown, page.expect_rows)
            base, read = bare_read(engine, page, ids, max(3, page.repeat or repeat))
            assert read == shown, (page.name, read, shown)
            median = statistics.median(times)
            line = {"bench": "web_page", "page": page.name, "viewer": page.viewer,
                    "tasks": sd.tasks, "median_ms": round(1000 * median, 1),
                    "max_ms": round(1000 * max(times), 1),
                    "baseline_ms": round(1000 * base, 2),
                    "ratio": round(median / base, 1) if base else None,
                    "rows": shown,
                    "first_ms": None if first_s is None else round(1000 * first_s, 1),
                    "repeat": len(times), "backend": backend, "path": page.path}
            emit(line)
            results.append(line)
    finally:
        for c in clients.values():
            c.close()
    return results


def emit(fields: dict[str, Any]) -> None:
    print(json.dumps(fields, ensure_ascii=False), flush=True)


def db_mb(engine: Engine, path: Path | None) -> float:
    if path is not None:
        with closing(sqlite3.connect(path)) as raw:  # the load's WAL folded into the file
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = path.stat().st_size
    else:
        with engine.connect() as conn:
            size = int(conn.execute(text(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind = 'r'")).scalar_one())
    return round(size / 2**20, 1)


def bench(url: str, backend: str, args: argparse.Namespace, path: Path | None,
          evidence: Path) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    store = open_store(url)  # migrations, as the store runs them
    migrate_s = time.perf_counter() - t0
    try:
        sd = seed(store.engine, args.tasks, args.task_codes)
        if backend == "postgresql":
            # What autovacuum gives a live database: statistics, and a visibility map for
            # index-only scans. Done now, or autovacuum would start on the fresh load in the
            # middle of the timings (it does, within seconds) and compete for the cores.
            with store.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE tasks, events, notices, people")
        emit({"bench": "web_seed", "backend": backend, "tasks": sd.tasks,
              "units": len(sd.units), "task_codes": len(sd.defs), "events": sd.events,
              "notices": sd.notices, "people": sd.people, "seconds": round(sd.seconds, 2),
              "migrate_seconds": round(migrate_s, 2),
              "db_mb": db_mb(store.engine, path)})
        only = set(args.pages.split(",")) if args.pages else None
        return run_pages(store, sd, backend, args.repeat, args.full_export, only, evidence)
    finally:
        store.engine.dispose()


def on_postgres(base: str, args: argparse.Namespace, evidence: Path) -> list[dict[str, Any]]:
    """The same in a fresh schema of `base`'s database, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        return bench(url.render_as_string(hide_password=False), "postgresql", args, None,
                     evidence)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="task instances")
    parser.add_argument("--task-codes", type=int, default=20, help="tasks of the plan")
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per page")
    parser.add_argument("--postgres", metavar="URL", help="also on this PostgreSQL database")
    parser.add_argument("--no-sqlite", dest="sqlite", action="store_false",
                        help="PostgreSQL only")
    parser.add_argument("--no-full-export", dest="full_export", action="store_false",
                        help="skip the whole plan's workbook")
    parser.add_argument("--pages", help="comma-separated page names (default: all)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the SQLite file (kept)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="duban-bench-") as tmp:
        evidence = Path(tmp) / "evidence"
        if args.sqlite:
            folder = args.dir or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "bench_board.db"
            for old in folder.glob(path.name + "*"):
                old.unlink()
            results += bench(f"sqlite:///{path}", "sqlite", args, path, evidence)
        if args.postgres:
            results += on_postgres(args.postgres, args, evidence)
    return results


if __name__ == "__main__":
    main()
