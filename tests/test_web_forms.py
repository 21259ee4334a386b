"""The task page and its forms over HTTP, with the workflow deciding (time-skipping server).

The app runs in the test's event loop (httpx over ASGI), beside the worker: a blocking
TestClient would hold the loop the worker needs to answer the commands it sends.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from domain.plan import TaskSpec
from infra.db.store import EventStore
from service import users
from tests.conftest import WORKFLOW_QUEUE
from tests.scenario import ROSTER, UNITS, make_spec
from tests.waiting import until
from web.access import task_url, tasks_t
from web.app import create_app
from web.context import WebContext
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff"
       b"\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82")


@dataclass
class Web:
    env: WorkflowEnvironment
    store: EventStore
    ctx: WebContext
    app: Any
    passwords: dict[str, str]

    async def signed_in(self, actor: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                   base_url="http://testserver")
        r = await client.post("/login", data={"actor": actor, "password": self.passwords[actor],
                                              "next": "/"})
        assert r.status_code == 303, r.text
        return client

    def events(self, task_id: str) -> list[dict[str, Any]]:
        return [s.event for s in self.store.load(task_id)]


@pytest.fixture(scope="module")
async def site(ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Web]:
    engine = wf_store.engine
    users.store_roster(engine, "webforms", ROSTER, {u.code: u.name for u in UNITS})
    at = dt.datetime.now(dt.UTC)
    passwords = {m.actor: users.issue(engine, m.actor, now=at, issued_by="test")
                 for m in ROSTER}

    async def connect() -> Any:
        return ts_env.client

    ctx = WebContext(engine=engine, store=wf_store,
                     evidence_dir=tmp_path_factory.mktemp("evidence"), connect=connect)
    yield Web(ts_env, wf_store, ctx, create_app(ctx), passwords)


async def start_task(site: Web, **kw: Any) -> TaskSpec:
    """A task started an hour ago (by the server's clock), recorded in the store."""
    now = await site.env.get_current_time()
    spec = make_spec(now - dt.timedelta(hours=1), plan_code=f"w{uuid.uuid4().hex[:8]}", **kw)
    await site.env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id, task_queue=WORKFLOW_QUEUE,
        search_attributes=initial_search_attributes(spec))

    def recorded() -> bool:
        with site.store.engine.connect() as conn:
            return conn.execute(tasks_t.select().where(
                tasks_t.c.task_id == spec.task_id)).first() is not None

    await until(recorded, f"{spec.task_id} in the store")
    return spec


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


async def page(client: httpx.AsyncClient, task_id: str, **params: str) -> httpx.Response:
    return await client.get(task_url(task_id), params=params)


async def post_form(client: httpx.AsyncClient, task_id: str, form: str, data: dict[str, Any],
                    files: Any = None, csrf: str | None = "page") -> httpx.Response:
    if csrf == "page":
        csrf = csrf_of((await page(client, task_id)).text)
    body = {**data, **({"csrf": csrf} if csrf is not None else {})}
    # multipart, as the browser sends these forms
    return await client.post(f"{task_url(task_id)}/commands/{form}", data=body,
                             files=files or {"_": ("", b"", "application/octet-stream")})


def error_beside(html: str, form: str, field: str) -> str:
    """The error text shown right after the field's input, and the input points at it."""
    m = re.search(rf'<p class="field-error" id="err-{form}-{field}" role="alert">([^<]+)</p>',
                  html)
    assert m, f"no error shown beside {form}.{field}"
    assert f'aria-describedby="err-{form}-{field}"' in html
    return m.group(1)


def local(moment: dt.datetime, spec: TaskSpec, fmt: str = "%Y-%m-%dT%H:%M") -> str:
    return moment.astimezone(ZoneInfo(spec.timezone)).strftime(fmt)


# --- a unit member's forms -------------------------------------------------------------------


async def test_member_progress_is_accepted_and_shown(site: Web) -> None:
    spec = await start_task(site)
    member = await site.signed_in("unit.member")
    r = await page(member, spec.task_id)
    assert r.status_code == 200
    assert "进度反馈" in r.text and f'action="{task_url(spec.task_id)}/commands/progress"' in r.text
    assert "/commands/acceptance" not in r.text  # a unit never accepts its own work
    r = await post_form(member, spec.task_id, "progress", {"percent": "60", "note": "摸底完成"})
    assert r.status_code == 303
    target = r.headers["location"]
    assert target.startswith(task_url(spec.task_id) + "?done=progress&seq=")
    shown = await member.get(target)
    assert "进度反馈：已受理" in shown.text
    assert "进度 60%：摸底完成" in shown.text  # the recorded event, in the answer and timeline
    progress = [e for e in site.events(spec.task_id) if e["type"] == "ProgressReported"]
    assert [(e["percent"], e["actor"], e["note"]) for e in progress] == [(60, "unit.member",
                                                                         "摸底完成")]
    assert "<td>60%" in shown.text


async def test_bad_form_shows_the_error_beside_the_field_and_sends_nothing(site: Web) -> None:
    spec = await start_task(site)
    member = await site.signed_in("unit.member")
    before = site.store.head(spec.task_id).seq
    r = await post_form(member, spec.task_id, "progress", {"percent": "150", "note": "x"})
    assert r.status_code == 400
    assert "0 到 100" in error_beside(r.text, "progress", "percent")
    assert 'value="150"' in r.text  # what was typed stays in the form
    r = await post_form(member, spec.task_id, "progress", {"percent": "六十"})
    assert r.status_code == 400 and error_beside(r.text, "progress", "percent")
    r = await post_form(member, spec.task_id, "request_extension",
                        {"node": "N1", "proposed_due": "", "reason": ""})
    assert r.status_code == 400
    assert error_beside(r.text, "request_extension", "proposed_due")
    assert error_beside(r.text, "request_extension", "reason")
    supervisor = await site.signed_in("supervisor")
    csrf = csrf_of((await supervisor.get(f"/inspect?task={spec.task_id}")).text)
    visited = local(await site.env.get_current_time() - dt.timedelta(minutes=20), spec)
    r = await supervisor.post("/inspect", data={
        "csrf": csrf, "task": spec.task_id, "visited_at": visited, "place": "  ",
        "outcome": "基本达标", "finding_0_severity": "一般", "finding_0_description": "台账缺页"},
        files={"finding_0_photos": ("p.png", PNG, "image/png")})
    assert r.status_code == 400
    assert "地点" in error_beside(r.text, "inspect", "place")
    assert site.store.head(spec.task_id).seq == before  # nothing was sent, nothing recorded
    assert not list(site.ctx.evidence_dir.iterdir())  # and no photo kept for a refused form


async def test_claim_evidence_is_stored_by_sha256_and_the_hash_is_in_the_event(site: Web) -> None:
    spec = await start_task(site)
    member = await site.signed_in("unit.member")
    content = "会议记录（扫描件）".encode() * 100
    digest = hashlib.sha256(content).hexdigest()
    r = await post_form(member, spec.task_id, "claim", {"node": "N1", "note": "已完成"},
                        files=[("evidence", ("会议记录.pdf", content, "application/pdf"))])
    assert r.status_code == 303, r.text
    claimed = [e for e in site.events(spec.task_id) if e["type"] == "NodeClaimed"]
    assert claimed[0]["evidence"] == [{"sha256": digest, "name": "会议记录.pdf", "geo": None}]
    assert (site.ctx.evidence_dir / digest).read_bytes() == content
    shown = await member.get(r.headers["location"])
    assert digest in shown.text and f'href="/evidence/{digest}"' in shown.text
    got = await member.get(f"/evidence/{digest}")
    assert got.status_code == 200 and got.content == content
    assert got.headers["x-content-type-options"] == "nosniff"
    other = await site.signed_in("other.unit")  # another village: cannot see the task
    assert (await other.get(f"/evidence/{digest}")).status_code == 404
    # The workflow's refusal is shown on the form (and recorded on the task): N1 is claimed.
    r = await post_form(member, spec.task_id, "claim", {"node": "N1"})
    assert r.status_code == 409 and "未被受理" in r.text
    assert site.events(spec.task_id)[-1]["type"] == "CommandRejected"


async def test_lead_accepts_a_claim_and_decides_an_extension(site: Web) -> None:
    spec = await start_task(site)
    member = await site.signed_in("unit.member")
    assert (await post_form(member, spec.task_id, "claim", {"node": "N1"})).status_code == 303
    due = spec.nodes[1].due
    proposed = (due + dt.timedelta(days=7)).astimezone(ZoneInfo(spec.timezone)).date()
    r = await post_form(member, spec.task_id, "request_extension",
                        {"node": "N2", "proposed_due": proposed.isoformat(), "reason": "雨季停工"})
    assert r.status_code == 303, r.text
    lead = await site.signed_in("lead.head")
    html = (await page(lead, spec.task_id)).text
    assert "/commands/acceptance" in html and "/commands/decide_extension" in html
    assert "/commands/progress" not in html
    r = await post_form(lead, spec.task_id, "acceptance", {"node": "N1", "decision": "reject"})
    assert r.status_code == 400 and error_beside(r.text, "acceptance", "note")
    r = await post_form(lead, spec.task_id, "acceptance", {"node": "N1", "decision": "accept"})
    assert r.status_code == 303
    r = await post_form(lead, spec.task_id, "decide_extension",
                        {"node": "N2", "approve": "yes", "reason": "同意"})
    assert r.status_code == 303, r.text
    types = [e["type"] for e in site.events(spec.task_id)]
    assert "NodeAccepted" in types and "ExtensionDecided" in types
    shown = (await lead.get(r.headers["location"])).text
    assert "批准（" in shown and proposed.isoformat() in shown  # both dates on the page


# --- the supervisor's inspection -------------------------------------------------------------


async def test_inspection_with_a_finding_and_a_photo_is_on_the_task_page(site: Web) -> None:
    spec = await start_task(site)
    supervisor = await site.signed_in("supervisor")
    form = await supervisor.get(f"/inspect?task={spec.task_id}")
    assert form.status_code == 200
    assert 'accept="image/*" capture="environment"' in form.text
    assert 'type="datetime-local"' in form.text
    visited = local(await site.env.get_current_time() - dt.timedelta(minutes=30), spec)
    digest = hashlib.sha256(PNG).hexdigest()
    r = await supervisor.post("/inspect", data={
        "csrf": csrf_of(form.text), "task": spec.task_id, "node": f"{spec.task_id}|N1",
        "visited_at": visited, "place": "东城镇一村村委会", "outcome": "基本达标",
        "location": "26.2634,117.6389", "inspection_id": "r1-01",
        "finding_0_severity": "较重", "finding_0_description": "公示栏未更新"},
        files={"finding_0_photos": ("现场.png", PNG, "image/png")})
    assert r.status_code == 303, r.text
    recorded = [e for e in site.events(spec.task_id) if e["type"] == "InspectionRecorded"]
    assert len(recorded) == 1
    finding = recorded[0]["findings"][0]
    assert finding["severity"] == "较重" and finding["description"] == "公示栏未更新"
    assert finding["evidence"] == [{"sha256": digest, "name": "现场.png",
                                    "geo": "26.2634,117.6389"}]
    assert recorded[0]["actor"] == "supervisor" and recorded[0]["nodes"] == ["N1"]
    shown = (await supervisor.get(r.headers["location"])).text
    assert "公示栏未更新" in shown and digest in shown and "r1-01" in shown
    member = await site.signed_in("unit.member")  # the unit sees it, and may open the photo
    assert digest in (await page(member, spec.task_id)).text
    assert (await member.get(f"/evidence/{digest}")).content == PNG
    # Sent again (a double tap on a phone): on the record once, nothing sent twice.
    r = await supervisor.post("/inspect", data={
        "csrf": csrf_of(form.text), "task": spec.task_id, "visited_at": visited,
        "place": "东城镇一村村委会", "outcome": "达标", "inspection_id": "r1-01"})
    assert r.status_code == 303 and "done=already" in r.headers["location"]
    assert len([e for e in site.events(spec.task_id) if e["type"] == "InspectionRecorded"]) == 1


async def test_inspection_round_sheet_answers_each_row(site: Web) -> None:
    spec = await start_task(site)
    supervisor = await site.signed_in("supervisor")
    upload = await supervisor.get("/inspections/upload")
    assert upload.status_code == 200
    visited = (await site.env.get_current_time() - dt.timedelta(minutes=10)).astimezone(
        ZoneInfo(spec.timezone)).isoformat()
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["任务ID", "检查编号", "督查人", "检查时间", "地点", "结果", "严重程度", "问题描述"])
    w.writerow([spec.task_id, "s1", "", visited, "一村", "基本达标", "一般", "记录未归档"])
    w.writerow([spec.task_id, "s2", "leader", visited, "一村", "达标", "", ""])
    w.writerow([spec.task_id, "s3", "supervisor", visited, "", "达标", "", ""])
    r = await supervisor.post("/inspections/upload", data={"csrf": csrf_of(upload.text)},
                              files={"sheet": ("round.csv", out.getvalue().encode(), "text/csv")})
    assert r.status_code == 200, r.text
    rows = re.findall(r"<tr>\s*<td>(\d+)</td>.*?<span class=\"st \w*\">([^<]+)</span>", r.text,
                      re.S)
    assert rows == [("2", "已记录"), ("3", "被拒绝"), ("4", "被拒绝")]
    assert "只能导入本人" in r.text

    def inspections() -> list[dict[str, Any]]:
        return [e for e in site.events(spec.task_id) if e["type"] == "InspectionRecorded"]

    await until(lambda: bool(inspections()), "the imported inspection in the store")
    recorded = inspections()
    assert [(e["inspection_id"], e["actor"]) for e in recorded] == [("s1", "supervisor")]
    bad = await supervisor.post("/inspections/upload", data={"csrf": csrf_of(upload.text)},
                                files={"sheet": ("round.txt", b"x", "text/plain")})
    assert bad.status_code == 400 and error_beside(bad.text, "upload", "sheet")


# --- who may do what -------------------------------------------------------------------------


async def test_auditor_sees_no_forms_and_is_refused_403(site: Web) -> None:
    spec = await start_task(site)
    auditor = await site.signed_in("auditor")
    r = await page(auditor, spec.task_id)
    assert r.status_code == 200 and "审计时间线" in r.text
    assert "/commands/" not in r.text and 'id="forms"' not in r.text
    before = site.store.head(spec.task_id).seq
    csrf = users.session(site.ctx.engine, auditor.cookies["duban_session"],
                         now=dt.datetime.now(dt.UTC))
    assert csrf is not None
    r = await post_form(auditor, spec.task_id, "progress", {"percent": "50"}, csrf=csrf.csrf)
    assert r.status_code == 403
    r = await post_form(auditor, spec.task_id, "acceptance", {"node": "N1", "decision": "accept"},
                        csrf=csrf.csrf)
    assert r.status_code == 403
    assert (await auditor.get("/inspect")).status_code == 403
    r = await auditor.post("/inspect", data={"csrf": csrf.csrf, "task": spec.task_id,
                                             "place": "x", "outcome": "达标"})
    assert r.status_code == 403
    assert site.store.head(spec.task_id).seq == before


async def test_missing_or_wrong_csrf_is_refused_403(site: Web) -> None:
    spec = await start_task(site)
    member = await site.signed_in("unit.member")
    before = site.store.head(spec.task_id).seq
    r = await post_form(member, spec.task_id, "progress", {"percent": "50"}, csrf=None)
    assert r.status_code == 403
    r = await post_form(member, spec.task_id, "progress", {"percent": "50"}, csrf="forged")
    assert r.status_code == 403
    assert site.store.head(spec.task_id).seq == before


async def test_another_units_task_answers_404_like_a_missing_one(site: Web) -> None:
    spec = await start_task(site)
    other = await site.signed_in("other.unit")
    r = await page(other, spec.task_id)
    missing = await page(other, spec.task_id + "x")
    assert r.status_code == missing.status_code == 404
    assert r.text == missing.text
    session = users.session(site.ctx.engine, other.cookies["duban_session"],
                            now=dt.datetime.now(dt.UTC))
    assert session is not None
    r = await post_form(other, spec.task_id, "progress", {"percent": "50"}, csrf=session.csrf)
    assert r.status_code == 404
    assert (await other.get(f"/inspect?task={spec.task_id}")).status_code == 403  # not 督查组
    # A member of the unit may not do what only the lead unit does.
    member = await site.signed_in("unit.member")
    r = await post_form(member, spec.task_id, "decide_extension",
                        {"node": "N1", "approve": "yes"})
    assert r.status_code == 403


async def test_as_of_picker_changes_the_timeline(site: Web) -> None:
    spec = await start_task(site)
    member = await site.signed_in("unit.member")
    assert (await post_form(member, spec.task_id, "acknowledge", {"note": "收到"})).status_code == 303
    await site.env.sleep(dt.timedelta(days=2))
    r = await post_form(member, spec.task_id, "progress", {"percent": "30", "note": "已开工"})
    assert r.status_code == 303
    events = site.events(spec.task_id)
    ack = next(e for e in events if e["type"] == "Acknowledged")
    day = local(dt.datetime.fromisoformat(ack["at"]), spec, "%Y-%m-%d")
    now_page = (await page(member, spec.task_id)).text
    then_page = (await page(member, spec.task_id, as_of=day)).text
    assert "已签收：收到" in now_page and "进度 30%：已开工" in now_page
    assert "已签收：收到" in then_page and "进度 30%：已开工" not in then_page
    assert f"截至 <b>{day}</b>" in then_page
    assert "/commands/" not in then_page  # the past is read, not acted on
    bad = await page(member, spec.task_id, as_of="2026-13-45")
    assert bad.status_code == 400 and "没有这一天" in bad.text


def test_evidence_store_keeps_one_copy_per_hash(tmp_path: Path) -> None:
    from web import evidence

    a = evidence.store(tmp_path, io.BytesIO(b"photo"), name="../../a.jpg", content_type="image/jpeg",
                       task_ids=["P/T1/u1"])
    b = evidence.store(tmp_path, io.BytesIO(b"photo"), name="b.jpg", content_type="image/jpeg",
                       task_ids=["P/T1/u2"])
    assert a.sha256 == b.sha256 == hashlib.sha256(b"photo").hexdigest()
    assert a.name == "a.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.sha256, f"{a.sha256}.json"]
    assert evidence.candidate_tasks(tmp_path, a.sha256) == ["P/T1/u1", "P/T1/u2"]
    assert evidence.path_of(tmp_path, "../etc/passwd") is None


async def test_a_member_signs_for_a_notice_and_a_missed_one_shows_on_page_and_board(
        site: Web) -> None:
    spec = await start_task(site, due_days=(2,), progress=(100,))
    now = await site.env.get_current_time()
    await site.env.sleep(spec.nodes[0].due - now + dt.timedelta(hours=1))  # the 提醒 fires
    await until(lambda: any(e["type"] == "EscalationFired" for e in site.events(spec.task_id)),
                "the reminder recorded")
    [remind] = [e for e in site.events(spec.task_id) if e["type"] == "EscalationFired"]
    member = await site.signed_in("unit.member")
    shown = await page(member, spec.task_id)
    assert f'action="{task_url(spec.task_id)}/commands/sign_notice"' in shown.text
    assert "待签收" in shown.text
    r = await post_form(member, spec.task_id, "sign_notice",
                        {"step_key": remind["step_key"], "note": "已收悉"})
    assert r.status_code == 303, r.text[:300]
    [signed] = [e for e in site.events(spec.task_id) if e["type"] == "NoticeSignedFor"]
    assert (signed["actor"], signed["step_key"], signed["note"]) == (
        "unit.member", remind["step_key"], "已收悉")
    # the 督办单 after it is left unanswered past its 反馈时限
    await site.env.sleep(dt.timedelta(days=30))  # past holidays too, whatever the clock
    await until(lambda: any(e["type"] == "NoticeReplyMissed" for e in site.events(spec.task_id)),
                "the missed reply recorded")
    shown = (await page(member, spec.task_id)).text
    assert "于" in shown and "签收" in shown and "逾期未签收、未反馈" in shown
    office = await site.signed_in("office.staff")
    board = (await office.get("/", params={"plan": spec.plan_code})).text
    m = re.search(r'data-stat="missed_replies">(\d+)<', board)
    assert m and int(m.group(1)) >= 1, "the board counts the missed reply"
