"""The web app in a real browser (headless Chromium, Debian's, driven by Playwright).

The stack is live (tests/web_harness.py): a plan in the time-skipping server, the worker
recording into the store, the app served by uvicorn; every command a page sends is signed by
the app's key and decided by the workflow. Screenshots of the board, the Gantt view and the
phone form are written to docs/screenshots/ when DUBAN_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.web_harness import (
    ACTORS,
    CHROMIUM,
    DONE_TASK,
    DONE_UNIT,
    GREEN_TASK,
    PLAN,
    RED_TASK,
    SCREENSHOTS,
    VILLAGES,
    WebStack,
    require_chromium,
    task_id,
)

pytestmark = pytest.mark.slow

RED = "rgb(217, 48, 37)"  # style.css --red
GREEN = "rgb(30, 142, 62)"  # style.css --green
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def screenshots() -> bool:
    return os.environ.get("DUBAN_SCREENSHOTS") == "1"


class Session:
    """A signed-in browser context for one role."""

    def __init__(self, stack: WebStack, context: Any, page: Any) -> None:
        self.stack = stack
        self.context = context
        self.page = page

    def url(self, path: str) -> str:
        return self.stack.base_url + path

    async def goto(self, path: str) -> Any:
        return await self.page.goto(self.url(path))


async def sign_in(stack: WebStack, browser: Any, role: str, *,
                  viewport: dict[str, int] = DESKTOP, **options: Any) -> Session:
    context = await browser.new_context(viewport=viewport, locale="zh-CN", **options)
    page = await context.new_page()
    await page.goto(stack.base_url + "/login")
    await page.fill("input[name=actor]", ACTORS.get(role, role))
    await page.fill("input[name=password]", stack.password(role))
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert "/login" not in page.url, await page.content()
    return Session(stack, context, page)


@pytest.fixture
async def sessions(web: WebStack, browser: Any) -> AsyncIterator[list[Session]]:
    opened: list[Session] = []
    yield opened
    for s in opened:
        await s.context.close()


async def open_as(sessions: list[Session], web: WebStack, browser: Any, role: str,
                  **kw: Any) -> Session:
    s = await sign_in(web, browser, role, **kw)
    sessions.append(s)
    return s


async def bg(page: Any, selector: str) -> str:
    return str(await page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor"))


async def text_of(page: Any, selector: str) -> str:
    return str((await page.inner_text(selector)).strip())


# --- where the browser tests may not run ----------------------------------------------------

@pytest.mark.parametrize("ci_value", ["true", "1"])
def test_in_ci_a_missing_chromium_fails_the_browser_tests(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci_value: str) -> None:
    monkeypatch.setenv("CI", ci_value)
    with pytest.raises(pytest.fail.Exception, match="must run"):
        require_chromium(tmp_path / "chromium")
    if CHROMIUM.exists():
        require_chromium(CHROMIUM)  # present: runs, whatever CI says


@pytest.mark.parametrize("ci_value", [None, "", "false"])
def test_outside_ci_a_missing_chromium_skips_them(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci_value: str | None) -> None:
    if ci_value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci_value)
    with pytest.raises(pytest.skip.Exception):
        require_chromium(tmp_path / "chromium")


# --- the board -----------------------------------------------------------------------------

async def test_the_board_shows_the_known_state_with_its_colours_and_rates(
        web: WebStack, browser: Any, sessions: list[Session]) -> None:
    s = await open_as(sessions, web, browser, "office")
    resp = await s.goto(f"/?plan={PLAN}")
    assert resp.status == 200
    page = s.page

    def cell(task: str, unit: str) -> str:
        return f'td.cell[data-task="{task_id(task, unit)}"]'

    for unit in VILLAGES:
        assert await page.get_attribute(cell(RED_TASK, unit), "data-light") == "red"
        assert await bg(page, cell(RED_TASK, unit)) == RED
        assert await page.get_attribute(cell(GREEN_TASK, unit), "data-light") == "green"
        assert await bg(page, cell(GREEN_TASK, unit)) == GREEN
    done = cell(DONE_TASK, DONE_UNIT)
    assert "done" in (await page.get_attribute(done, "class") or "")
    assert "✓" in await text_of(page, done)
    assert await page.query_selector(f'td.cell[data-task="{task_id(DONE_TASK, "wv21")}"]') is None

    # 8 task instances: 3 red (T1), 5 green (T2 ×3, T3 ×2), one of them done.
    stats = {k: await text_of(page, f'[data-stat="{k}"]')
             for k in ("tasks", "red", "yellow", "green", "done", "completion")}
    assert stats == {"tasks": "8", "red": "3", "yellow": "0", "green": "5", "done": "1",
                     "completion": "12.5%"}
    assert await text_of(page, '[data-unit-rate="wv12"]') == "33.3%"
    assert await text_of(page, '[data-unit-rate="wv11"]') == "0%"
    towns = {t: await text_of(page, f'tr[data-township="{t}"] .rate') for t in ("wt1", "wt2")}
    assert towns == {"wt1": "16.7%", "wt2": "0%"}
    # the overdue list names the red cells' tasks only
    late = await page.eval_on_selector_all("tr.late[data-task]",
                                           "rows => rows.map(r => r.dataset.task)")
    assert set(late) <= {task_id(RED_TASK, u) for u in VILLAGES}

    if screenshots():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "board.png"), full_page=True)


async def test_the_gantt_view_draws_every_visible_task_with_a_today_line(
        web: WebStack, browser: Any, sessions: list[Session]) -> None:
    s = await open_as(sessions, web, browser, "leader")
    resp = await s.goto(f"/gantt?plan={PLAN}")
    assert resp.status == 200
    page = s.page
    assert await page.locator("svg.gantt #today-line").count() == 1
    bands = await page.eval_on_selector_all("svg.gantt rect.task-band",
                                            "rs => rs.map(r => r.getAttribute('class'))")
    assert len(bands) == 8
    assert sum("light-red" in b for b in bands) == 3
    # the red tasks' first node is overdue: drawn late, running on to today (the app's today is
    # the engine's, however far other tests have skipped the test server's time)
    assert await page.locator("svg.gantt rect.overrun").count() == 3
    if screenshots():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "gantt.png"), full_page=True)


# --- the supervisor's phone form ------------------------------------------------------------

def tiny_png(seed: int) -> bytes:
    """A valid 2×2 PNG whose bytes (and so SHA-256) depend on `seed`."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + bytes([seed % 256, 80, 40] * 2) for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


async def test_a_supervisor_records_an_inspection_with_a_finding_and_photo_on_a_phone(
        web: WebStack, browser: Any, sessions: list[Session]) -> None:
    import hashlib

    tid = task_id(RED_TASK, "wv21")
    before = web.store.head(tid).seq
    s = await open_as(sessions, web, browser, "supervisor", viewport=PHONE, is_mobile=True,
                      has_touch=True, device_scale_factor=2)
    resp = await s.goto(f"/inspect?task={tid}")
    assert resp.status == 200
    page = s.page
    # one column on a phone: nothing wider than the screen
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    photo = tiny_png(before)
    sha = hashlib.sha256(photo).hexdigest()
    await page.check(f'input[name=node][value="{tid}|N1"]')
    visited = (await web.now()).astimezone(ZoneInfo("Asia/Shanghai"))
    await page.fill("#inspect-visited_at", visited.strftime("%Y-%m-%dT%H:%M"))
    await page.fill("#inspect-place", "西山镇一村党群服务中心")
    await page.check('input[name=outcome][value="不达标"]')
    await page.fill("#inspect-location", "26.2634,117.6389")
    await page.check('input[name=finding_0_severity][value="较重"]')
    await page.fill("#inspect-finding_0_description", "增补人选公示材料未上墙")
    await page.set_input_files("#inspect-finding_0_photos", files=[
        {"name": "现场.png", "mimeType": "image/png", "buffer": photo}])
    if screenshots():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "inspect-phone.png"), full_page=True)
    async with page.expect_navigation() as nav:
        await page.click("button.submit")
    assert "/tasks/" + tid in page.url and "done=inspect" in page.url, (
        (await nav.value).status, page.url, await page.inner_text("main"))

    # the task page shows it: the visit, the finding, and its photo's SHA-256
    section = page.locator("#inspections")
    text = await section.inner_text()
    assert "西山镇一村党群服务中心" in text and "不达标" in text
    assert "增补人选公示材料未上墙" in text and "较重" in text
    assert sha in await section.locator("code.sha").all_inner_texts()
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    # the record: one inspection by the signed-in supervisor, proven by the app's signature
    [recorded] = [e for e in web.events(tid)
                  if e["seq"] > before and e["type"] == "InspectionRecorded"]
    assert recorded["actor"] == ACTORS["supervisor"]
    assert recorded["proof"]["method"] == "signed" and recorded["proof"]["sender"] == "web"
    [finding] = recorded["findings"]
    assert finding["severity"] == "较重"
    assert [x["sha256"] for x in finding["evidence"]] == [sha]
    # the photo is served back by its hash, unchanged
    got = await page.request.get(web.base_url + f"/evidence/{sha}")
    assert got.status == 200 and await got.body() == photo


# --- a bad form ------------------------------------------------------------------------------

async def test_a_bad_form_shows_its_error_beside_the_field_and_changes_nothing(
        web: WebStack, browser: Any, sessions: list[Session]) -> None:
    tid = task_id(GREEN_TASK, "wv11")
    await web.settle(tid)
    before = web.events(tid)
    s = await open_as(sessions, web, browser, "member")
    await s.goto(f"/tasks/{tid}")
    page = s.page
    await page.fill("#progress-percent", "150")
    await page.fill("#progress-note", "多报了")
    async with page.expect_navigation() as nav:
        await page.click("#form-progress button[type=submit]")
    assert (await nav.value).status == 400
    error = page.locator("#err-progress-percent")
    assert await error.is_visible()
    assert "0 到 100" in await error.inner_text()
    field = page.locator("#form-progress .field.has-error")
    assert await field.count() == 1
    assert await field.locator("#progress-percent").count() == 1  # beside its own input
    assert await page.get_attribute("#progress-percent", "aria-invalid") == "true"
    assert await page.get_attribute("#progress-percent", "aria-describedby") == \
        "err-progress-percent"
    assert await page.input_value("#progress-percent") == "150"  # kept to correct
    # nothing sent: the task's record is as it was (not even a refusal is recorded)
    await web.settle(tid)
    assert web.events(tid) == before

    # the phone form too: a missing place is marked on its field, nothing is sent
    other = task_id(GREEN_TASK, "wv21")
    before_other = web.events(other)
    sup = await open_as(sessions, web, browser, "supervisor", viewport=PHONE, is_mobile=True)
    await sup.goto(f"/inspect?task={other}")
    await sup.page.check('input[name=outcome][value="达标"]')
    async with sup.page.expect_navigation() as nav:
        await sup.page.click("button.submit")
    assert (await nav.value).status == 400
    assert await sup.page.locator("#err-inspect-place").is_visible()
    assert await sup.page.get_attribute("#inspect-place", "aria-invalid") == "true"
    await web.settle(other)
    assert web.events(other) == before_other


# --- a member sees only its own unit ---------------------------------------------------------

OTHER_NAMES = ("西山镇", "东城镇二村", "wv21", "wv12")


async def test_a_member_cannot_reach_another_units_task_by_url_list_search_or_export(
        web: WebStack, browser: Any, sessions: list[Session]) -> None:
    import io

    from openpyxl import load_workbook

    s = await open_as(sessions, web, browser, "member")
    page = s.page
    # by URL: another unit's task answers like a missing one
    for unit in ("wv21", "wv12"):
        resp = await s.goto(f"/tasks/{task_id(RED_TASK, unit)}")
        assert resp.status == 404
        body = await page.inner_text("main")
        assert not any(n in body for n in OTHER_NAMES), body
    missing = await s.goto(f"/tasks/{task_id(RED_TASK, 'nowhere')}")
    assert missing.status == 404 and await page.inner_text("main") == body
    # own unit's task: shown
    assert (await s.goto(f"/tasks/{task_id(RED_TASK, 'wv11')}")).status == 200

    # the board, the list and the Gantt view hold only the member's unit
    for path in (f"/?plan={PLAN}", f"/tasks?plan={PLAN}", f"/gantt?plan={PLAN}"):
        resp = await s.goto(path)
        assert resp.status == 200
        html = await page.content()
        assert not any(n in html for n in OTHER_NAMES), path
        assert "东城镇一村" in html, path
    await s.goto(f"/?plan={PLAN}")
    cells = await page.eval_on_selector_all("td.cell[data-task]",
                                            "cs => cs.map(c => c.dataset.task)")
    assert sorted(cells) == sorted(task_id(t, "wv11") for t in (RED_TASK, GREEN_TASK, DONE_TASK))
    assert await text_of(page, '[data-stat="tasks"]') == "3"

    # search (the task list's box): another unit or township finds nothing
    searches = {"西山镇": [], "东城镇二村": [], "wv21": [], "wv12": [],
                "村两委班子增补": [task_id(RED_TASK, "wv11")]}
    for words, expected in searches.items():
        await s.goto(f"/tasks?plan={PLAN}")
        await page.fill("input[name=q]", words)
        async with page.expect_navigation():
            await page.click("form.filters button[type=submit]")
        rows = await page.eval_on_selector_all("tr[data-task]",
                                               "rs => rs.map(r => r.dataset.task)")
        assert rows == expected, words
        shown = await page.inner_text("main")  # what is read, the search box's value aside
        assert not any(n in shown for n in OTHER_NAMES), words
    # nor the inspection search (supervisors only)
    assert (await s.goto("/inspect?q=wv21")).status == 403

    # export: the workbook holds the member's unit only
    got = await page.request.get(web.base_url + f"/export.xlsx?plan={PLAN}")
    assert got.status == 200
    book = load_workbook(io.BytesIO(await got.body()), read_only=True)
    text = " ".join(str(v) for ws in book.worksheets for row in ws.iter_rows(values_only=True)
                    for v in row if v is not None)
    assert "东城镇一村" in text
    assert not any(n in text for n in OTHER_NAMES), text


# --- an auditor reads and never commands -----------------------------------------------------

async def test_an_auditors_command_is_refused(web: WebStack, browser: Any,
                                               sessions: list[Session]) -> None:
    from service import users
    from web.auth import SESSION_COOKIE, now

    tid = task_id(GREEN_TASK, "wv11")
    s = await open_as(sessions, web, browser, "auditor")
    page = s.page
    assert (await s.goto(f"/tasks/{tid}")).status == 200
    assert await page.locator("#forms").count() == 0
    assert await page.locator("form[action*='/commands/']").count() == 0
    assert await page.locator("a[href^='/inspect']").count() == 0
    assert (await s.goto(f"/inspect?task={tid}")).status == 403
    assert (await s.goto("/inspections/upload")).status == 403

    # a forged POST with the auditor's own valid CSRF token: refused, nothing sent
    [cookie] = [c for c in await s.context.cookies() if c["name"] == SESSION_COOKIE]
    info = users.session(web.engine, cookie["value"], now=now())
    assert info is not None and info.actor == ACTORS["auditor"]
    await web.settle(tid)
    before = web.events(tid)
    forged = {
        f"/tasks/{tid}/commands/progress": {"csrf": info.csrf, "percent": "50",
                                            "actor": ACTORS["member"]},
        f"/tasks/{tid}/commands/acknowledge": {"csrf": info.csrf},
        "/inspect": {"csrf": info.csrf, "task": tid, "place": "某地", "outcome": "达标",
                     "visited_at": "2026-12-01T09:00"},
    }
    for path, form in forged.items():
        resp = await page.request.post(web.base_url + path, multipart=form)
        assert resp.status == 403, (path, resp.status)
    await web.settle(tid)
    assert web.events(tid) == before
